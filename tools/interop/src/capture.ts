import { execFile } from "node:child_process";

/** Options of {@link tsharkFields}. */
export interface TsharkFieldsOptions {
  /** A Wireshark display filter (`-Y`), e.g. `icmp`. Default: every packet. */
  readonly filter?: string;
  /** Field names (`-e`), e.g. `icmp.seq`. At least one. */
  readonly fields: readonly string[];
  /** The tshark binary. Default `tshark` on PATH. */
  readonly tshark?: string;
}

/**
 * Decode a capture file (pcap or pcapng, as tshark reads either) with tshark and return the
 * requested fields: one row per packet that passes the filter, one string per field (empty
 * when the packet has no such field; repeated fields joined by commas, as tshark prints them).
 * An independent reader of what our `PcapngWriter` captures and QEMU's
 * `filter-dump` files hold.
 *
 * @param file - the capture
 * @param options - display filter and fields
 * @returns the rows, in capture order
 * @throws Error (as a rejection) with tshark's message when it fails or is not installed
 */
export function tsharkFields(file: string, options: TsharkFieldsOptions): Promise<string[][]> {
  if (options.fields.length === 0) throw new RangeError("options.fields must not be empty");
  const args = ["-r", file, "-T", "fields", "-E", "separator=/t"];
  if (options.filter !== undefined) args.push("-Y", options.filter);
  for (const f of options.fields) args.push("-e", f);
  return new Promise((resolve, reject) => {
    execFile(options.tshark ?? "tshark", args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`tshark ${args.join(" ")} failed: ${err.message}\n${stderr}`));
        return;
      }
      resolve(
        stdout
          .split("\n")
          .filter((l) => l !== "")
          .map((l) => l.split("\t")),
      );
    });
  });
}
