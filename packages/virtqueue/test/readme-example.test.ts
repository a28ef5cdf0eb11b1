// The README opens with this example; it runs with Node against the built packages, the way a
// user would run it, and must print what its comments say.
import { describe, expect, it } from "vitest";
import { runReadmeExample } from "../../../test-support/readme-example.js";

const here = new URL("../", import.meta.url);

describe("README example", () => {
  it("serves the driver's request on the device side and returns it used", () => {
    expect(runReadmeExample(here, 0)).toEqual(["interrupt the driver", "req-1 4"]);
  });
});
