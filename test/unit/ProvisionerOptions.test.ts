import { assert, describe, it } from "@effect/vitest"
import { Duration, Result } from "effect"
import * as Options from "../../src/provisioner/Options.ts"
import { provisionerFlags } from "../support/provisionerFlags.ts"

const message = (result: Result.Result<unknown, Options.InvalidOptions>) =>
  Result.isFailure(result) ? result.failure.message : "succeeded"

describe("provisioner options", () => {
  it("derives namespaces from --cluster-name and POD_NAMESPACE", () => {
    const resolved = Result.getOrThrow(Options.resolve(provisionerFlags(), "agents"))
    assert.deepStrictEqual(resolved.source, { namespace: "cluster1", name: "external-managed-kubeconfig" })
    assert.deepStrictEqual(resolved.target, { namespace: "agents", name: "cluster-proxy-managed-kubeconfig" })
    assert.deepStrictEqual(resolved.serviceAccount, { namespace: "agents", name: "cluster-proxy" })
    assert.isUndefined(resolved.addon)
  })

  it("tracks the add-on only with a hub, in --cluster-name's namespace by default", () => {
    const resolved = Result.getOrThrow(Options.resolve(provisionerFlags({ hubKubeconfig: "/hub" }), "agents"))
    assert.deepStrictEqual(resolved.addon, { namespace: "cluster1", name: "cluster-proxy" })
  })

  it.each([
    { name: "missing --cluster-name", given: { clusterName: "" }, pod: "agents", expected: "--cluster-name is required" },
    { name: "no target namespace anywhere", given: {}, pod: undefined, expected: "--target-namespace is required (or set POD_NAMESPACE)" },
    { name: "refresh-before not shorter", given: { refreshBefore: Duration.hours(24) }, pod: "a", expected: "--refresh-before (24h) must be shorter than --token-expiration (24h)" },
    { name: "token below the TokenRequest minimum", given: { tokenExpiration: Duration.minutes(5), refreshBefore: Duration.minutes(1) }, pod: "a", expected: "--token-expiration (5m) must be at least 10m" },
    { name: "zero sync interval", given: { syncInterval: Duration.zero }, pod: "a", expected: "--sync-interval must be greater than 0" },
    { name: "add-on namespace without a hub", given: { addonNamespace: "x" }, pod: "a", expected: "--addon-namespace needs --hub-kubeconfig" },
    { name: "a relative token file", given: { tokenFilePath: "managed/token" }, pod: "a", expected: '--token-file-path: the token file path "managed/token" must be absolute' },
    { name: "a token file path naming a folder", given: { tokenFilePath: "/etc/managed/" }, pod: "a", expected: '--token-file-path: the token file path "/etc/managed/" ends with "/"' },
    { name: "a control character in the token file path", given: { tokenFilePath: "/etc/\rtoken" }, pod: "a", expected: '--token-file-path: the token file path "/etc/\\rtoken" contains a control character' }
  ])("refuses $name", ({ expected, given, pod }) => {
    assert.include(message(Options.resolve(provisionerFlags(given), pod)), expected)
  })

  it("--token-file-path: absent or empty writes the token alone, a path adds tokenFile", () => {
    assert.isFalse("tokenFile" in Result.getOrThrow(Options.resolve(provisionerFlags(), "a")))
    assert.isFalse("tokenFile" in Result.getOrThrow(Options.resolve(provisionerFlags({ tokenFilePath: "" }), "a")))
    assert.strictEqual(Result.getOrThrow(Options.resolve(provisionerFlags({ tokenFilePath: "/etc/managed/token" }), "a")).tokenFile, "/etc/managed/token")
  })

  it("--cleanup needs only the target", () => {
    assert.deepStrictEqual(Result.getOrThrow(Options.resolveCleanupTarget({ targetNamespace: "", targetName: "s" }, "agents")), { namespace: "agents", name: "s" })
    assert.include(message(Options.resolveCleanupTarget({ targetNamespace: "", targetName: "s" }, undefined)), "--target-namespace is required")
  })
})
