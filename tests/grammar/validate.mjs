// Validates every line of a schema_conformance output with ajv (JSON Schema 2020-12): the output
// must parse as JSON and validate against its schema. Exits 1 naming each failure.
// Usage: node validate.mjs OUT.jsonl
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const lines = readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.length > 0);
let failures = 0;
for (const [i, line] of lines.entries()) {
  const { schema, output, terminated } = JSON.parse(line);
  const fail = (why) => {
    failures++;
    console.error(`line ${i + 1}: ${why}\n  schema: ${JSON.stringify(schema)}\n  output: ${JSON.stringify(output)}`);
  };
  if (!terminated) {
    fail("the output did not terminate");
    continue;
  }
  let value;
  try {
    value = JSON.parse(output);
  } catch (e) {
    fail(`not JSON: ${e.message}`);
    continue;
  }
  // A fresh validator per schema: each has its own $defs.
  const ajv = new Ajv2020({ strict: false, allErrors: true, unicodeRegExp: true });
  const validate = ajv.compile(schema);
  if (!validate(value)) fail(`invalid: ${ajv.errorsText(validate.errors)}`);
}
console.log(`validate.mjs: ${lines.length} outputs, ${failures} failures`);
if (lines.length === 0) process.exit(1);
process.exit(failures > 0 ? 1 : 0);
