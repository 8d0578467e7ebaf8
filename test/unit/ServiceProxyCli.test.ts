/**
 * `tether service-proxy` as a user meets it: help with defaults, command lines that cannot work
 * (one-line message, non-zero exit, no stack trace), and the option checks behind them. Runs the
 * command through the test-only entry point until `src/cli/bin.ts` registers it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Option, Result } from "effect"
import * as ChildProcess from "node:child_process"
import * as ServiceProxyCommand from "../../src/cli/commands/ServiceProxy.ts"
import * as ServiceProxyOptions from "../../src/serviceproxy/Options.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const tether = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  ChildProcess.spawnSync(process.execPath, [tetherEntry(), ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, POD_NAMESPACE: "", ...env }
  })

const given = {
  cert: "/tls/tls.crt",
  key: "/tls/tls.key",
  additionalServiceCa: "",
  hubKubeconfig: "",
  managedKubeconfig: "",
  hostedServiceProxyMode: Option.none<string>(),
  enableImpersonation: true,
  tokenReviewCacheTtl: Duration.seconds(10),
  tokenReviewErrorPattern: [] as ReadonlyArray<string>,
  serviceRelayName: "cluster-proxy-service-relay",
  serviceRelayPort: 7444,
  listen: { host: undefined, port: 7443 },
  maxIdleConns: 100,
  idleConnTimeout: Duration.seconds(90),
  tlsHandshakeTimeout: Duration.seconds(10),
  expectContinueTimeout: Duration.seconds(1),
  busyPoll: Duration.micros(200n)
}

describe("tether service-proxy", () => {
  it("documents every flag of spec 4.1 with its default", () => {
    const help = tether(["service-proxy", "--help"])
    assert.strictEqual(help.status, 0, help.stderr)
    for (const expected of [
      "--cert", "--key", "--additional-service-ca", "--hub-kubeconfig", "--managed-kubeconfig",
      "--hosted-service-proxy-mode", "default Disabled when --managed-kubeconfig is given",
      "--enable-impersonation", "(default true)", "--token-review-cache-ttl", "default 10s",
      "--service-relay-name", 'default "cluster-proxy-service-relay"', "--service-relay-port", "default 7444",
      "--listen", 'default ":7443"', "--health-probe-bind-address", 'default ":8000"',
      "--max-idle-conns", "default 100", "--idle-conn-timeout", "default 90s", "--tls-handshake-timeout",
      "--token-review-error-pattern", 'default "invalid bearer token"', "--busy-poll", "default 200us"
    ]) {
      assert.include(help.stdout, expected)
    }
  })

  it.each([
    { name: "no certificate", args: [], expected: "--cert and --key are required" },
    { name: "an unknown mode", args: ["--cert=c", "--key=k", "--hosted-service-proxy-mode=relay"], expected: 'hosted-service-proxy-mode must be one of Disabled, BestEffort, or Relay; got "relay"' },
    { name: "Relay without a managed kubeconfig", args: ["--cert=c", "--key=k", "--hosted-service-proxy-mode=Relay"], expected: "managed-kubeconfig is required when hosted-service-proxy-mode=Relay" },
    { name: "Relay without POD_NAMESPACE", args: ["--cert=c", "--key=k", "--managed-kubeconfig=/m", "--hosted-service-proxy-mode=Relay"], expected: "POD_NAMESPACE must name the add-on namespace in Relay mode" },
    { name: "a bad relay name", args: ["--cert=c", "--key=k", "--managed-kubeconfig=/m", "--hosted-service-proxy-mode=Relay", "--service-relay-name=Relay_1"], env: { POD_NAMESPACE: "addon" }, expected: "is not a valid Service name" },
    { name: "a bad duration", args: ["--cert=c", "--key=k", "--token-review-cache-ttl=1d"], expected: 'invalid duration "1d"' },
    { name: "a busy-poll budget above 10ms", args: ["--cert=c", "--key=k", "--busy-poll=20ms"], expected: "--busy-poll must be a duration from 0s to 10ms" },
    { name: "an unreadable managed kubeconfig", args: ["--cert=/nonexistent/tls.crt", "--key=/nonexistent/tls.key", "--health-probe-bind-address=127.0.0.1:0", "--listen=127.0.0.1:0", "--managed-kubeconfig=/nonexistent/kubeconfig"], expected: "cannot read the managed kubeconfig /nonexistent/kubeconfig" }
  ])("exits non-zero on $name, saying what is wrong", ({ args, env, expected }) => {
    const run = tether(["service-proxy", ...args], env)
    assert.notStrictEqual(run.status, 0)
    const output = run.stdout + run.stderr
    assert.include(output, expected)
    assert.notInclude(output, "    at ", "no stack trace")
  })

  it("resolves flags into options: Disabled by default when hosted, Direct otherwise, patterns defaulted", () => {
    const direct = Result.getOrThrow(ServiceProxyCommand.resolve(given, {}))
    assert.deepStrictEqual(direct.managedKubeconfig, { _tag: "NotHosted" })
    assert.deepStrictEqual(direct.proxy.deployment, { _tag: "Direct" })
    assert.deepStrictEqual(direct.tokenReviewErrorPatterns, ["invalid bearer token"])
    assert.deepStrictEqual(direct.proxy.busyPoll, Duration.micros(200n), "adaptive polling up to 200us by default")
    const never = Result.getOrThrow(ServiceProxyCommand.resolve({ ...given, busyPoll: Duration.zero }, {}))
    assert.deepStrictEqual(never.proxy.busyPoll, Duration.zero)

    const hosted = Result.getOrThrow(ServiceProxyCommand.resolve({ ...given, managedKubeconfig: " /etc/managed/kubeconfig " }, {}))
    assert.deepStrictEqual(hosted.managedKubeconfig, { _tag: "File", path: "/etc/managed/kubeconfig" })
    assert.deepStrictEqual(hosted.proxy.deployment, { _tag: "Hosted", mode: "Disabled" })

    const relay = Result.getOrThrow(ServiceProxyCommand.resolve({
      ...given,
      managedKubeconfig: "/m",
      hostedServiceProxyMode: Option.some("Relay"),
      tokenReviewErrorPattern: ["invalid bearer token", " token has expired ", ""]
    }, { POD_NAMESPACE: "addon-ns" }))
    assert.deepStrictEqual(relay.tokenReviewErrorPatterns, ["invalid bearer token", "token has expired"])
    assert.deepStrictEqual(relay.proxy.deployment, { _tag: "Hosted", mode: "Relay" })
    assert.deepStrictEqual(relay.proxy.relay, { namespace: "addon-ns", name: "cluster-proxy-service-relay", port: 7444 })
  })

  it("holds the Relay-mode rule in one place, for a file or an in-process managed kubeconfig", () => {
    const input = ServiceProxyCommand.input({ ...given, hostedServiceProxyMode: Option.some("Relay") }, { POD_NAMESPACE: "addon-ns" })
    const refused = ServiceProxyOptions.resolve(input)
    assert.isTrue(Result.isFailure(refused))
    assert.include(Result.isFailure(refused) ? refused.failure.message : "", "managed-kubeconfig is required when hosted-service-proxy-mode=Relay")
    const inProcess = Result.getOrThrow(ServiceProxyOptions.resolve({ ...input, managedKubeconfig: { _tag: "InProcess" } }))
    assert.deepStrictEqual(inProcess.managedKubeconfig, { _tag: "InProcess" })
    assert.deepStrictEqual(inProcess.proxy.deployment, { _tag: "Hosted", mode: "Relay" })
  })
})
