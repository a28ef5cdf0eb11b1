// The destination process of a migration (see migrate.ts):
//   node tools/linux/dist/migrate-target.js SOCKET DISK
// prints "listening" once the socket listens, then "destination <JSON report>" when the
// resumed guest's run ends.
import { runMigrationTarget } from "./migrate.js";

const [socketPath, disk] = process.argv.slice(2);
if (socketPath === undefined || disk === undefined) {
  console.error("usage: migrate-target.js SOCKET DISK");
  process.exit(2);
}
const report = await runMigrationTarget(socketPath, disk, () => console.log("listening"));
console.log(
  `destination ${JSON.stringify(report, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v))}`,
);
process.exit(0);
