// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title CMX test collateral: a 6-decimal ERC-20 for local chains.
/// @notice Mintable by its deployer only. In production the clearing house is given the
///         configured USDC address instead.
contract CollateralToken {
    string public constant name = "CMX Test USDC";
    string public constant symbol = "tUSDC";
    uint8 public constant decimals = 6;

    address public immutable minter;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor() {
        minter = msg.sender;
    }

    /// @notice Creates `amount` tokens for `to`; deployer only.
    function mint(address to, uint256 amount) external {
        require(msg.sender == minter, "only minter");
        require(to != address(0), "zero address");
        totalSupply += amount;
        unchecked {
            // cannot overflow: no balance exceeds the total supply
            balanceOf[to] += amount;
        }
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        require(spender != address(0), "zero address");
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    /// @notice Moves `value` from `from` to `to` against the caller's allowance; an allowance
    ///         of type(uint256).max is never decreased.
    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= value, "insufficient allowance");
            unchecked {
                allowance[from][msg.sender] = allowed - value;
            }
        }
        _transfer(from, to, value);
        return true;
    }

    function _transfer(address from, address to, uint256 value) private {
        require(to != address(0), "zero address");
        uint256 balance = balanceOf[from];
        require(balance >= value, "insufficient balance");
        unchecked {
            // both safe: checked just above, and no balance exceeds the total supply
            balanceOf[from] = balance - value;
            balanceOf[to] += value;
        }
        emit Transfer(from, to, value);
    }
}
