// The README opens with this example; it runs with Node against the built packages, the way a
// user would run it, and must print what its comments say.
import { describe, expect, it } from "vitest";
import { runReadmeExample } from "../../../test-support/readme-example.js";

const here = new URL("../", import.meta.url);

describe("README example", () => {
  it("wires a BlkDriver to a BlkDevice by hand (memory map, MMIO registers, interrupt line) and reads back what it wrote", () => {
    expect(runReadmeExample(here, 0)).toEqual(["9d10 140000", "2048n 90 90 true"]);
  });
});
