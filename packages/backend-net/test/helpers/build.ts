// The child-process fixtures run plain Node, so they import the compiled package: build it
// (and the devices package it depends on) once, incrementally, before those tests.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

export function buildPackage(): void {
  const tsc = fileURLToPath(
    new URL("../../../../node_modules/typescript/bin/tsc", import.meta.url),
  );
  const pkg = fileURLToPath(new URL("../..", import.meta.url));
  execFileSync(process.execPath, [tsc, "-b", pkg], { stdio: "inherit" });
}
