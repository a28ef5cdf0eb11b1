import { createSocket } from "node:dgram";

/**
 * A UDP port that was free a moment ago (bind to 0, read, close). Two dgram tunnels must know
 * each other's port before either binds; the race with another process is accepted in tests.
 */
export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket("udp4");
    s.once("error", reject);
    s.bind(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
