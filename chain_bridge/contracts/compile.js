#!/usr/bin/env node
// Compiles every chain_bridge/contracts/*.sol with the solc-js pinned in package.json and
// writes chain_bridge/artifacts/<Name>.json for the contract named after each file.
//
//   node chain_bridge/contracts/compile.js           write the artifacts
//   node chain_bridge/contracts/compile.js --check   compare with the committed artifacts;
//                                                    exit 1 on any difference
//
// The settings below are part of the artifacts: changing one changes the bytecode.
"use strict";

const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..", "..");
const SOURCES = __dirname;
const ARTIFACTS = path.join(ROOT, "chain_bridge", "artifacts");

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  // cancun: understood by py-evm (eth-tester) and Anvil alike
  evmVersion: "cancun",
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function loadSolc() {
  const pinned = require(path.join(ROOT, "package.json")).devDependencies.solc;
  let solc;
  try {
    solc = require("solc");
  } catch {
    fail(`the Solidity compiler (npm package solc ${pinned}) is not installed: run \`npm ci\``);
  }
  const version = solc.version();
  if (!version.startsWith(`${pinned}+`)) {
    fail(`solc ${version} is installed but package.json pins ${pinned}: run \`npm ci\``);
  }
  return solc;
}

function fail(message) {
  process.stderr.write(`compile.js: ${message}\n`);
  process.exit(1);
}

// JSON with every object's keys sorted, two-space indent and a final newline.
function canonical(value) {
  const sort = (v) => {
    if (Array.isArray(v)) return v.map(sort);
    if (v !== null && typeof v === "object") {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]));
    }
    return v;
  };
  return JSON.stringify(sort(value), null, 2) + "\n";
}

function compile(solc) {
  const files = fs.readdirSync(SOURCES).filter((f) => f.endsWith(".sol")).sort();
  const sources = {};
  for (const file of files) {
    sources[file] = { content: fs.readFileSync(path.join(SOURCES, file), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = output.errors || [];
  for (const problem of problems) {
    process.stderr.write(problem.formattedMessage || problem.message);
  }
  // warnings fail too: the contracts are kept warning-free
  if (problems.length > 0) fail(`${problems.length} compiler message(s)`);

  const artifacts = {};
  for (const file of files) {
    const name = path.basename(file, ".sol");
    const contract = (output.contracts[file] || {})[name];
    if (!contract) fail(`${file} defines no contract ${name}`);
    artifacts[`${name}.json`] = canonical({
      contractName: name,
      abi: contract.abi,
      bytecode: "0x" + contract.evm.bytecode.object,
      deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
      solcVersion: solc.version(),
    });
  }
  return artifacts;
}

function committed() {
  if (!fs.existsSync(ARTIFACTS)) return {};
  const found = {};
  for (const file of fs.readdirSync(ARTIFACTS).filter((f) => f.endsWith(".json")).sort()) {
    found[file] = fs.readFileSync(path.join(ARTIFACTS, file), "utf8");
  }
  return found;
}

function main() {
  const check = process.argv.includes("--check");
  const built = compile(loadSolc());
  const existing = committed();
  if (check) {
    const names = [...new Set([...Object.keys(built), ...Object.keys(existing)])].sort();
    const stale = names.filter((n) => built[n] !== existing[n]);
    for (const name of stale) {
      const why = !(name in existing) ? "missing" : !(name in built) ? "has no source" : "differs";
      process.stderr.write(`chain_bridge/artifacts/${name} ${why}\n`);
    }
    if (stale.length > 0) {
      fail("artifacts out of date with the sources: run `npm run compile` and commit them");
    }
    process.stdout.write(`${names.length} artifacts match the sources\n`);
    return;
  }
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const name of Object.keys(existing)) {
    if (!(name in built)) fs.unlinkSync(path.join(ARTIFACTS, name));
  }
  for (const [name, text] of Object.entries(built)) {
    fs.writeFileSync(path.join(ARTIFACTS, name), text);
  }
  process.stdout.write(`wrote ${Object.keys(built).length} artifacts to chain_bridge/artifacts\n`);
}

main();
