// The README opens with this example; it runs with Node against the built packages, the way a
// user would run it, and must print what its comments say.
import { describe, expect, it } from "vitest";
import { runReadmeExample } from "../../../test-support/readme-example.js";

const here = new URL("../", import.meta.url);

describe("README example", () => {
  it("writes and reads back a sector through BlkDriver and BlkDevice in one thread", () => {
    expect(runReadmeExample(here, 0)).toEqual(["2048n 90 90"]);
  });
});
