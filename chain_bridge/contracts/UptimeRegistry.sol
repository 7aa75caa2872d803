// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title CMX uptime registry: provider node keys and the check of a node's uptime attestation.
/// @notice A node proves it was alive in an epoch by finding a nonce whose attestation digest
///         lies below `target`, and signing that digest with its node key (EIP-191).
///         `verifyAttestation` re-checks one such attestation, so anyone can audit the set
///         the operator accepted.
contract UptimeRegistry {
    struct Node {
        address provider;
        bytes32 nodeClass;
        uint32 units;
        uint64 registeredAt;
        bool active;
        uint64 deregisterAt;
    }

    /// @dev secp256k1n / 2: signatures with a larger s are the malleable twin and are refused
    uint256 private constant HALF_CURVE_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    address public immutable owner;
    uint256 public difficulty;
    /// @notice type(uint256).max / difficulty: an attestation's digest must lie below it.
    uint256 public target;
    mapping(address => Node) public nodes;

    event DifficultySet(uint256 difficulty, uint256 target);
    event NodeRegistered(address indexed provider, address indexed node, bytes32 nodeClass, uint32 units);
    event NodeDeregistered(address indexed provider, address indexed node, uint64 effectiveAt);

    constructor(uint256 difficulty_) {
        owner = msg.sender;
        _setDifficulty(difficulty_);
    }

    /// @notice Changes the proof-of-work difficulty; owner only.
    function setDifficulty(uint256 difficulty_) external {
        require(msg.sender == owner, "only owner");
        _setDifficulty(difficulty_);
    }

    /// @notice Registers `node` (its key's address) for the caller, its provider. A node key is
    ///         registered once, for good.
    function registerNode(address node, bytes32 nodeClass, uint32 units) external {
        require(node != address(0), "zero node");
        require(units > 0, "zero units");
        require(nodes[node].provider == address(0), "registered");
        nodes[node] = Node(msg.sender, nodeClass, units, uint64(block.timestamp), true, 0);
        emit NodeRegistered(msg.sender, node, nodeClass, units);
    }

    /// @notice Ends the node's activity at `effectiveAt` (not in the past). A deregistration
    ///         already made can only be brought forward, so no past activity ever changes.
    function deregisterNode(address node, uint64 effectiveAt) external {
        Node storage n = nodes[node];
        require(n.provider == msg.sender, "not provider");
        require(effectiveAt >= block.timestamp, "past");
        require(n.deregisterAt == 0 || effectiveAt < n.deregisterAt, "deregistered");
        n.active = false;
        n.deregisterAt = effectiveAt;
        emit NodeDeregistered(msg.sender, node, effectiveAt);
    }

    /// @notice Whether `node` is registered and not deregistered at `timestamp`.
    function isActive(address node, uint64 timestamp) external view returns (bool) {
        Node storage n = nodes[node];
        return n.provider != address(0) && (n.deregisterAt == 0 || timestamp < n.deregisterAt);
    }

    /// @notice keccak256("CMX-UPTIME" ‖ chainid ‖ this registry ‖ node ‖ epoch ‖ beacon ‖ nonce),
    ///         packed: the digest a node's proof of work and signature are over.
    function attestationDigest(address node, uint64 epoch, bytes32 beacon, uint64 nonce)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encodePacked("CMX-UPTIME", block.chainid, address(this), node, epoch, beacon, nonce));
    }

    /// @notice Whether the attestation is valid: node registered, digest below target, and the
    ///         65-byte signature (r ‖ s ‖ v, v 27 or 28, low s) over the EIP-191 message of the
    ///         digest recovers the node. Never reverts on bad input.
    function verifyAttestation(address node, uint64 epoch, bytes32 beacon, uint64 nonce, bytes calldata signature)
        external
        view
        returns (bool)
    {
        if (nodes[node].provider == address(0) || signature.length != 65) {
            return false;
        }
        bytes32 digest = attestationDigest(node, epoch, beacon, nonce);
        if (uint256(digest) >= target) {
            return false;
        }
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if ((v != 27 && v != 28) || uint256(s) > HALF_CURVE_ORDER) {
            return false;
        }
        bytes32 message = keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", digest));
        return ecrecover(message, v, r, s) == node;
    }

    function _setDifficulty(uint256 difficulty_) private {
        require(difficulty_ > 0, "zero difficulty");
        difficulty = difficulty_;
        target = type(uint256).max / difficulty_;
        emit DifficultySet(difficulty_, target);
    }
}
