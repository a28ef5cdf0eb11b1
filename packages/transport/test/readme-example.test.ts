// The README opens with this example; it runs with Node against the built packages, the way a
// user would run it, and must print what its comments say.
import { describe, expect, it } from "vitest";
import { runReadmeExample } from "../../../test-support/readme-example.js";

const here = new URL("../", import.meta.url);

describe("README example", () => {
  it("serves a toy entropy device through virtio-mmio and counts the exits", () => {
    expect(runReadmeExample(here, 0)).toEqual([
      "irq 1",
      "entropy 4 42424242",
      "{ QueueNotify: 1, InterruptStatus: 1, InterruptACK: 1 }",
    ]);
  });

  it("suspends a device with a request in its ring, encodes it, and resumes it on a fresh model that serves the request", () => {
    expect(runReadmeExample(here, 2)).toEqual(["15 undefined", "posted before the move 42424242"]);
  });
});
