// pnpm linux --browser [--port N] [--run 'COMMAND']: serve the page that boots the guest in a
// browser tab (see browser-server.ts), print its address, serve until Ctrl-C.
import { parseArgs } from "node:util";
import { MissingAssetError } from "./assets.js";
import { serveBrowserLinux } from "./browser-server.js";

/**
 * The `--browser` mode of the CLI.
 * @param argv - the arguments after the script name
 */
export async function serveBrowser(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      browser: { type: "boolean" },
      port: { type: "string" },
      run: { type: "string" },
    },
    allowPositionals: false,
  });
  const port = values.port === undefined ? 8086 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`linux: --port must be a TCP port, got ${values.port}\n`);
    process.exit(2);
  }
  try {
    const s = await serveBrowserLinux({
      port,
      ...(values.run !== undefined ? { command: values.run } : {}),
    });
    process.stdout.write(
      `Linux in a browser tab: open ${s.url} (cross-origin isolated; the disk starts with "${s.diskText}"; Ctrl-C stops)\n`,
    );
    process.on("SIGINT", () => {
      void s.close().then(() => process.exit(0));
    });
  } catch (e) {
    if (e instanceof MissingAssetError) {
      process.stderr.write(`linux: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
}
