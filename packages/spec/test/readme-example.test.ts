// The README opens with this example; it runs with Node against the built packages, the way a
// user would run it, and must print what its comments say.
import { describe, expect, it } from "vitest";
import { runReadmeExample } from "../../../test-support/readme-example.js";

const here = new URL("../", import.meta.url);

describe("README example", () => {
  it("prints the feature, status and configuration values its comments give", () => {
    expect(runReadmeExample(here, 0)).toEqual(["120000000", "false", "15", "2 1048576n"]);
  });
});
