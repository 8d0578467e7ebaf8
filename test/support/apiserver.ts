/**
 * Whether the integration suites that need a real kube-apiserver skip. They skip only on a
 * machine without the assets (`npm run envtest` builds them) and only when the assets are not
 * required: `.ci/run` sets `TETHER_REQUIRE_APISERVER=1`, so in CI a missing apiserver fails
 * those suites instead of skipping them.
 */
import * as EnvtestAssets from "../../src/testing/EnvtestAssets.ts"

export const noApiserver: boolean = EnvtestAssets.resolveSync() === undefined &&
  process.env["TETHER_REQUIRE_APISERVER"] !== "1"
