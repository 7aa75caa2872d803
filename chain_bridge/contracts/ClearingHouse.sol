// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @dev The two ERC-20 calls the vault makes. Return values are checked leniently (see
///      `_callToken`) so that tokens returning nothing also work.
interface IERC20Transfers {
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title CMX clearing house: the collateral vault and the settlement of clearing batches.
/// @notice Balances here are the settled ones. Matching happens off chain; the operator
///         settles its results in sequential batches forming a hash chain. If the operator
///         leaves a forced withdrawal unserved for `forcedWithdrawalDelay` seconds, anyone may
///         freeze the contract, after which each account can take out its settled balance and
///         nothing else moves.
contract ClearingHouse {
    /// @notice A signed change of one account's settled balance.
    struct Delta {
        address account;
        int256 amount;
    }

    /// @notice A payout; `forcedRequestId` is 0, or the forced request it serves.
    struct Withdrawal {
        uint64 withdrawalId;
        uint64 forcedRequestId;
        address account;
        uint256 amount;
    }

    struct ForcedRequest {
        address account;
        uint256 amount;
        uint64 requestedAt;
        bool served;
    }

    address public immutable token;
    address public immutable operator;
    address public immutable feeAccount;
    uint64 public immutable forcedWithdrawalDelay;

    mapping(address => uint256) public balanceOf;

    // the four counters share one storage slot
    uint64 public lastDepositId;
    uint64 public lastCreditedDepositId;
    uint64 public lastBatchId;
    uint64 public lastForcedRequestId;

    bool public frozen;
    bytes32 public lastBatchHash;
    /// @notice Sum of the deltas of the chunks settled since the last final chunk (<= 0).
    int256 public batchCarry;

    mapping(uint64 => ForcedRequest) public forcedRequests;
    mapping(uint64 => bytes32) public batchHashes;
    mapping(uint64 => bytes32) public fillsRoots;
    mapping(uint64 => bytes32) public attestationsRoots;

    event Deposited(address indexed account, uint256 amount, uint64 indexed depositId);
    event Withdrawn(uint64 indexed withdrawalId, address indexed account, uint256 amount);
    event ForcedWithdrawalRequested(uint64 indexed requestId, address indexed account, uint256 amount);
    event ForcedWithdrawalServed(uint64 indexed requestId, address indexed account, uint256 amount);
    event BatchSettled(
        uint64 indexed batchId,
        bytes32 batchHash,
        bytes32 fillsRoot,
        bytes32 attestationsRoot,
        uint64 creditedDepositId,
        bool lastChunk
    );
    event Frozen(uint64 requestId);
    event Exited(address indexed account, uint256 amount);

    modifier notFrozen() {
        require(!frozen, "frozen");
        _;
    }

    constructor(address token_, address operator_, address feeAccount_, uint64 forcedWithdrawalDelay_) {
        require(token_.code.length > 0, "token");
        require(operator_ != address(0), "operator");
        token = token_;
        operator = operator_;
        feeAccount = feeAccount_;
        forcedWithdrawalDelay = forcedWithdrawalDelay_;
    }

    /// @notice Pulls `amount` tokens from the caller (approve first) and credits its settled
    ///         balance; the engine learns of it from the `Deposited` event.
    function deposit(uint256 amount) external notFrozen {
        _deposit(msg.sender, amount);
    }

    /// @notice Pulls `amount` tokens from the caller and credits `account`'s settled balance:
    ///         how the operator funds accounts no one holds a key to (the insurance fund).
    function depositFor(address account, uint256 amount) external notFrozen {
        require(account != address(0), "zero address");
        _deposit(account, amount);
    }

    function _deposit(address account, uint256 amount) private {
        require(amount > 0, "zero amount");
        _callToken(abi.encodeCall(IERC20Transfers.transferFrom, (msg.sender, address(this), amount)));
        balanceOf[account] += amount;
        uint64 depositId = ++lastDepositId;
        emit Deposited(account, amount, depositId);
    }

    /// @notice Settles one chunk of a clearing batch: applies the deltas, then pays the
    ///         withdrawals, and extends the batch hash chain. Chunks of one batch put debits
    ///         first, so that until the last chunk the deltas settled so far never sum above 0.
    function settleBatch(
        uint64 batchId,
        bytes32 prevBatchHash,
        uint64 creditedDepositId,
        Delta[] calldata deltas,
        Withdrawal[] calldata withdrawals,
        bytes32 fillsRoot,
        bytes32 attestationsRoot,
        bool lastChunk
    ) external notFrozen {
        require(msg.sender == operator, "only operator");
        require(batchId == lastBatchId + 1, "batch id");
        require(prevBatchHash == lastBatchHash, "previous hash");
        require(
            creditedDepositId >= lastCreditedDepositId && creditedDepositId <= lastDepositId,
            "deposit id"
        );
        _applyDeltas(deltas, lastChunk);

        bytes32 batchHash = keccak256(
            abi.encode(
                batchId,
                prevBatchHash,
                creditedDepositId,
                keccak256(abi.encode(deltas)),
                keccak256(abi.encode(withdrawals)),
                fillsRoot,
                attestationsRoot,
                lastChunk
            )
        );
        lastBatchId = batchId;
        lastCreditedDepositId = creditedDepositId;
        lastBatchHash = batchHash;
        batchHashes[batchId] = batchHash;
        fillsRoots[batchId] = fillsRoot;
        attestationsRoots[batchId] = attestationsRoot;

        // token transfers come last, after every state change of the batch
        _payWithdrawals(withdrawals);
        emit BatchSettled(batchId, batchHash, fillsRoot, attestationsRoot, creditedDepositId, lastChunk);
    }

    /// @notice Asks the operator to pay out `amount`; if no batch serves the request within
    ///         `forcedWithdrawalDelay`, anyone may `freeze` the contract.
    function requestForcedWithdrawal(uint256 amount) external notFrozen {
        require(amount > 0 && amount <= balanceOf[msg.sender], "withdrawal over balance");
        uint64 requestId = ++lastForcedRequestId;
        forcedRequests[requestId] = ForcedRequest(msg.sender, amount, uint64(block.timestamp), false);
        emit ForcedWithdrawalRequested(requestId, msg.sender, amount);
    }

    /// @notice Freezes the contract for good, given a forced request left unserved past the delay.
    function freeze(uint64 requestId) external notFrozen {
        ForcedRequest storage request = forcedRequests[requestId];
        require(request.account != address(0) && !request.served, "forced request");
        require(block.timestamp >= uint256(request.requestedAt) + forcedWithdrawalDelay, "too early");
        frozen = true;
        emit Frozen(requestId);
    }

    /// @notice Once frozen: pays the caller its whole settled balance.
    function exit() external {
        require(frozen, "not frozen");
        uint256 amount = balanceOf[msg.sender];
        require(amount > 0, "nothing to exit");
        balanceOf[msg.sender] = 0;
        _callToken(abi.encodeCall(IERC20Transfers.transfer, (msg.sender, amount)));
        emit Exited(msg.sender, amount);
    }

    /// @notice Whether `leaf` is in the fills tree of batch `batchId`.
    function verifyFill(uint64 batchId, bytes32 leaf, bytes32[] calldata proof) external view returns (bool) {
        return verifyProof(fillsRoots[batchId], leaf, proof);
    }

    /// @notice Merkle proof check with sorted pairs: parent = keccak256(min(a, b) ‖ max(a, b)).
    function verifyProof(bytes32 root, bytes32 leaf, bytes32[] calldata proof) public pure returns (bool) {
        bytes32 node = leaf;
        for (uint256 i; i < proof.length; ) {
            bytes32 sibling = proof[i];
            node = node < sibling
                ? keccak256(abi.encode(node, sibling))
                : keccak256(abi.encode(sibling, node));
            unchecked {
                ++i;
            }
        }
        return node == root;
    }

    function _applyDeltas(Delta[] calldata deltas, bool lastChunk) private {
        int256 carry = batchCarry;
        uint256 count = deltas.length;
        for (uint256 i; i < count; ) {
            address account = deltas[i].account;
            int256 amount = deltas[i].amount;
            uint256 balance = balanceOf[account];
            if (amount < 0) {
                uint256 debit;
                unchecked {
                    // type(int256).min negates to itself and casts to 2**255, above any balance
                    debit = uint256(-amount);
                }
                require(balance >= debit, "negative balance");
                unchecked {
                    balanceOf[account] = balance - debit;
                }
            } else {
                balanceOf[account] = balance + uint256(amount);
            }
            carry += amount;
            unchecked {
                ++i;
            }
        }
        if (lastChunk) {
            require(carry == 0, "not zero-sum");
        } else {
            require(carry <= 0, "credit before debit");
        }
        batchCarry = carry;
    }

    function _payWithdrawals(Withdrawal[] calldata withdrawals) private {
        for (uint256 i; i < withdrawals.length; ) {
            Withdrawal calldata withdrawal = withdrawals[i];
            address account = withdrawal.account;
            uint256 amount = withdrawal.amount;
            uint256 balance = balanceOf[account];
            require(balance >= amount, "withdrawal over balance");
            unchecked {
                balanceOf[account] = balance - amount;
            }
            uint64 requestId = withdrawal.forcedRequestId;
            if (requestId != 0) {
                ForcedRequest storage request = forcedRequests[requestId];
                require(
                    requestId <= lastForcedRequestId &&
                        request.account == account &&
                        !request.served &&
                        amount <= request.amount,
                    "forced request"
                );
                request.served = true;
            }
            _callToken(abi.encodeCall(IERC20Transfers.transfer, (account, amount)));
            emit Withdrawn(withdrawal.withdrawalId, account, amount);
            if (requestId != 0) {
                emit ForcedWithdrawalServed(requestId, account, amount);
            }
            unchecked {
                ++i;
            }
        }
    }

    /// @dev Calls the token, bubbling up its revert reason; accepts `true` or no return data.
    function _callToken(bytes memory data) private {
        (bool ok, bytes memory result) = token.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
        require(result.length == 0 || abi.decode(result, (bool)), "token transfer failed");
    }
}
