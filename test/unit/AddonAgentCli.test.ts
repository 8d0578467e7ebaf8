/**
 * `tether addon-agent` command-line handling: defaults, what turns checks off, and command lines
 * that cannot work. The subcommand runs in-process here (the entry point registers it).
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Result } from "effect"
import { Command } from "effect/cli"
import * as AddonAgentCommand from "../../src/cli/commands/AddonAgent.ts"

const given: AddonAgentCommand.Given = {
  spokeKubeconfig: "",
  clusterName: "",
  addonName: "cluster-proxy",
  leaseNamespace: "",
  leaseDuration: Duration.seconds(60),
  renewInterval: Duration.seconds(60),
  proxyAgentReadinessUrl: "http://localhost:8093/readyz",
  enableProxyAgentHealthCheck: true,
  tokenFreshnessMargin: Duration.minutes(5)
}

const failure = (result: Result.Result<unknown, { readonly message: string }>) => Result.isFailure(result) ? result.failure.message : ""

describe("addon-agent options", () => {
  it("defaults: default mode, Lease cluster-proxy in $POD_NAMESPACE, proxy-agent check on", () => {
    const options = Result.getOrThrow(AddonAgentCommand.resolve(given, "open-cluster-management-agent-addon"))
    assert.deepStrictEqual(options, {
      clusterName: undefined,
      addonName: "cluster-proxy",
      leaseNamespace: "open-cluster-management-agent-addon",
      leaseDuration: Duration.seconds(60),
      renewInterval: Duration.seconds(60),
      spokeKubeconfig: undefined,
      proxyAgentReadinessUrl: "http://localhost:8093/readyz",
      tokenFreshnessMargin: Duration.minutes(5)
    })
  })

  it("--spoke-kubeconfig means hosted mode; --lease-namespace wins over $POD_NAMESPACE", () => {
    const options = Result.getOrThrow(
      AddonAgentCommand.resolve({ ...given, spokeKubeconfig: "/etc/managed/kubeconfig", leaseNamespace: "addons", clusterName: "c1" }, "pod-ns")
    )
    assert.strictEqual(options.spokeKubeconfig, "/etc/managed/kubeconfig")
    assert.strictEqual(options.leaseNamespace, "addons")
    assert.strictEqual(options.clusterName, "c1")
  })

  it("an empty readiness URL or --enable-proxy-agent-health-check=false turns the proxy-agent check off", () => {
    assert.isUndefined(Result.getOrThrow(AddonAgentCommand.resolve({ ...given, proxyAgentReadinessUrl: "" }, "ns")).proxyAgentReadinessUrl)
    assert.isUndefined(Result.getOrThrow(AddonAgentCommand.resolve({ ...given, enableProxyAgentHealthCheck: false }, "ns")).proxyAgentReadinessUrl)
  })

  it.each([
    { name: "no namespace at all", patch: {}, namespace: undefined, expected: "--lease-namespace is required when POD_NAMESPACE is not set" },
    { name: "an empty add-on name", patch: { addonName: " " }, namespace: "ns", expected: "--addon-name must not be empty" },
    { name: "a zero lease duration", patch: { leaseDuration: Duration.zero }, namespace: "ns", expected: "--lease-duration must be greater than 0" },
    { name: "a zero renew interval", patch: { renewInterval: Duration.zero }, namespace: "ns", expected: "--renew-interval must be greater than 0" },
    { name: "a readiness URL that is not http(s)", patch: { proxyAgentReadinessUrl: "localhost:8093/readyz" }, namespace: "ns", expected: "is not an http(s) URL" }
  ])("refuses $name", ({ expected, namespace, patch }) => {
    assert.include(failure(AddonAgentCommand.resolve({ ...given, ...patch }, namespace)), expected)
  })

  it.effect("the command fails with the usage message before touching any cluster", () =>
    Effect.gen(function*() {
      const previous = process.env["POD_NAMESPACE"]
      delete process.env["POD_NAMESPACE"]
      const run = Command.runWith(AddonAgentCommand.command, { version: "0", renderErrors: false })
      const error = yield* Effect.flip(run(["--kubeconfig=/nonexistent", "--lease-duration=1m"])).pipe(
        Effect.ensuring(Effect.sync(() => {
          if (previous !== undefined) process.env["POD_NAMESPACE"] = previous
        }))
      )
      assert.strictEqual(error._tag, "UsageError")
      assert.include(error.message, "--lease-namespace is required")
    }).pipe(Effect.provide(NodeServices.layer)))
})
