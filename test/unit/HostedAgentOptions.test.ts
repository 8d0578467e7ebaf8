/**
 * hosted-agent's options, pure: where the components get the managed kubeconfig is a variant
 * (the provisioner in process, or a mounted file), and each component's own rules come from
 * that component's `Options` module, the Relay-mode rule included.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Result } from "effect"
import * as Options from "../../src/agent/Options.ts"
import { provisionerFlags } from "../support/provisionerFlags.ts"

const input = (overrides: Partial<Options.Input> = {}): Options.Input => ({
  components: "provisioner,addon-lease,apiserver-proxy,service-proxy",
  managedKubeconfig: "",
  healthProbeBindAddress: { host: undefined, port: 8000 },
  provisioner: { ...provisionerFlags(), kubeconfig: "" },
  apiserverProxy: {
    listen: { host: undefined, port: 8443 },
    dialTimeout: Duration.seconds(30),
    reloadInterval: Duration.seconds(30),
    drainTimeout: Duration.seconds(30),
    maxConnections: 1024,
    idleTimeout: Duration.zero
  },
  serviceProxy: {
    listen: { host: undefined, port: 7443 },
    certFile: "/tls/tls.crt",
    keyFile: "/tls/tls.key",
    additionalServiceCa: "",
    mode: undefined,
    enableImpersonation: true,
    tokenReviewCacheTtl: Duration.seconds(10),
    tokenReviewErrorPatterns: [],
    serviceRelayName: "cluster-proxy-service-relay",
    serviceRelayPort: 7444,
    maxIdleConnections: 100,
    idleConnectionTimeout: Duration.seconds(90),
    tlsHandshakeTimeout: Duration.seconds(10),
    expectContinueTimeout: Duration.seconds(1)
  },
  lease: {
    leaseNamespace: "",
    leaseDuration: Duration.seconds(60),
    renewInterval: Duration.seconds(60),
    proxyAgentReadinessUrl: "http://localhost:8093/readyz",
    enableProxyAgentHealthCheck: true,
    tokenFreshnessMargin: Duration.minutes(5)
  },
  ...overrides
})

const env = { POD_NAMESPACE: "agents" }

const message = (result: Result.Result<unknown, { readonly message: string }>) =>
  Result.isFailure(result) ? result.failure.message : "succeeded"

describe("hosted-agent options", () => {
  it("with the provisioner, every component takes the kubeconfig it hands over in process", () => {
    const options = Result.getOrThrow(Options.resolve(input(), env))
    assert.strictEqual(options.managedKubeconfig._tag, "InProcess")
    assert.deepStrictEqual(
      options.managedKubeconfig._tag === "InProcess" ? options.managedKubeconfig.provisioner.target : undefined,
      { namespace: "agents", name: "cluster-proxy-managed-kubeconfig" }
    )
    assert.deepStrictEqual(options.serviceProxy?.managedKubeconfig, { _tag: "InProcess" })
    assert.deepStrictEqual(options.serviceProxy?.proxy.deployment, { _tag: "Hosted", mode: "Disabled" })
    assert.deepStrictEqual(options.addonLease, {
      clusterName: "cluster1",
      addonName: "cluster-proxy",
      leaseNamespace: "agents",
      leaseDuration: Duration.seconds(60),
      renewInterval: Duration.seconds(60),
      proxyAgentReadinessUrl: "http://localhost:8093/readyz",
      tokenFreshnessMargin: Duration.minutes(5)
    })
  })

  it("without the provisioner, the components read the mounted file", () => {
    const options = Result.getOrThrow(
      Options.resolve(input({ components: "service-proxy,addon-lease", managedKubeconfig: " /etc/managed/kubeconfig " }), env)
    )
    assert.deepStrictEqual(options.managedKubeconfig, { _tag: "File", path: "/etc/managed/kubeconfig" })
    assert.deepStrictEqual(options.serviceProxy?.managedKubeconfig, { _tag: "File", path: "/etc/managed/kubeconfig" })
    assert.isUndefined(options.apiserverProxy)
  })

  it("--token-file-path reaches the in-process provisioner; empty leaves it out", () => {
    const options = Result.getOrThrow(Options.resolve(input({ provisioner: { ...input().provisioner, tokenFilePath: "/var/run/managed/token" } }), env))
    const provisioner = options.managedKubeconfig._tag === "InProcess" ? options.managedKubeconfig.provisioner : undefined
    assert.strictEqual<string | undefined>(provisioner?.tokenFile, "/var/run/managed/token")
    const plain = Result.getOrThrow(Options.resolve(input(), env))
    assert.isFalse(plain.managedKubeconfig._tag === "InProcess" && "tokenFile" in plain.managedKubeconfig.provisioner)
  })

  it("Relay mode is allowed in process and still needs POD_NAMESPACE, by the service proxy's own rule", () => {
    // The other components are told their namespaces, so only the relay needs POD_NAMESPACE.
    const relay = input({
      provisioner: { ...input().provisioner, targetNamespace: "agents" },
      lease: { ...input().lease, leaseNamespace: "agents" },
      serviceProxy: { ...input().serviceProxy, mode: "Relay" }
    })
    const options = Result.getOrThrow(Options.resolve(relay, env))
    assert.deepStrictEqual(options.serviceProxy?.proxy.relay, { namespace: "agents", name: "cluster-proxy-service-relay", port: 7444 })
    assert.include(message(Options.resolve(relay, {})), "POD_NAMESPACE must name the add-on namespace in Relay mode")
  })

  it.each([
    { name: "a file next to the provisioner", patch: { managedKubeconfig: "/m" }, expected: "--managed-kubeconfig conflicts with the provisioner component" },
    { name: "no file without the provisioner", patch: { components: "apiserver-proxy" }, expected: "--managed-kubeconfig is required when --components leaves out provisioner (apiserver-proxy need it)" },
    {
      name: "a token file path without the provisioner",
      patch: { components: "addon-lease", managedKubeconfig: "/m", provisioner: { ...input().provisioner, tokenFilePath: "/etc/managed/token" } },
      expected: "--token-file-path shapes the kubeconfig the provisioner writes; it needs provisioner among --components"
    },
    { name: "a relative token file path", patch: { provisioner: { ...input().provisioner, tokenFilePath: "token" } }, expected: '--token-file-path: the token file path "token" must be absolute' },
    { name: "an unknown component", patch: { components: "provisioner,relay" }, expected: '--components: unknown component "relay"' },
    { name: "a relay flag out of range", patch: { apiserverProxy: { ...input().apiserverProxy, maxConnections: -1 } }, expected: "--apiserver-proxy-max-connections" },
    { name: "two listeners on one port", patch: { healthProbeBindAddress: { host: undefined, port: 7443 } }, expected: "--health-probe-bind-address and --service-proxy-listen both listen on port 7443" }
  ])("refuses $name", ({ patch, expected }) => {
    assert.include(message(Options.resolve(input(patch), env)), expected)
  })
})
