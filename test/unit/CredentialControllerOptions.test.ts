/** The credential controller's flags: the two discovery modes and every rule, with clear messages. */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Result } from "effect"
import * as Options from "../../src/controller/Options.ts"

const base: Options.Flags = {
  hubKubeconfig: "",
  hostingClusterName: "",
  sourceSecretSelector: "",
  addons: "cluster-proxy",
  tokenExpiration: Duration.hours(24),
  refreshBefore: Duration.hours(1),
  identityCheckInterval: Duration.minutes(10),
  concurrency: 8,
  kubeApiQps: 50,
  kubeApiBurst: 100,
  shardLeaseNamespace: "",
  shardIdentity: "",
  shardLeaseDuration: Duration.seconds(15),
  shardRenewInterval: Duration.seconds(5)
}

const message = (flags: Partial<Options.Flags>, env: Options.Environment = {}) => {
  const result = Options.resolve({ ...base, ...flags }, env)
  return Result.isFailure(result) ? result.failure.message : "ok"
}

describe("credential-controller options", () => {
  it("hub mode: needs the hosting cluster's name; --addons narrows, empty serves every add-on", () => {
    const resolved = Result.getOrThrow(Options.resolve({ ...base, hubKubeconfig: "/hub", hostingClusterName: "hosting-1", addons: "" }))
    assert.deepStrictEqual(resolved.mode, { _tag: "Hub", hubKubeconfig: "/hub", config: { hostingClusterName: "hosting-1", addons: undefined } })
    const narrowed = Result.getOrThrow(Options.resolve({ ...base, hubKubeconfig: "/hub", hostingClusterName: "hosting-1", addons: "a, b" }))
    assert.deepStrictEqual(narrowed.mode._tag === "Hub" && narrowed.mode.config.addons, ["a", "b"])
  })

  it("--kube-api-qps and --kube-api-burst make the process's request limit", () => {
    const resolved = Result.getOrThrow(Options.resolve({ ...base, sourceSecretSelector: "a=b", kubeApiQps: 2.5, kubeApiBurst: 4 }))
    assert.deepStrictEqual(resolved.requestLimit, { perSecond: 2.5, burst: 4 })
  })

  it("--token-file-path: off unless given, then every generated kubeconfig carries it", () => {
    assert.isFalse("tokenFile" in Result.getOrThrow(Options.resolve({ ...base, sourceSecretSelector: "a=b" })))
    const resolved = Result.getOrThrow(Options.resolve({ ...base, sourceSecretSelector: "a=b", tokenFilePath: "/var/run/managed/token" }))
    assert.strictEqual(resolved.tokenFile, "/var/run/managed/token")
  })

  it("hubless mode: a selector and at least one add-on", () => {
    const resolved = Result.getOrThrow(Options.resolve({ ...base, sourceSecretSelector: "tether/source=yes" }))
    assert.deepStrictEqual(resolved.mode, { _tag: "Hubless", selector: "tether/source=yes", config: { addons: ["cluster-proxy"] } })
  })

  it("rejects bad combinations and values with a message naming the flag", () => {
    const table: Array<[Partial<Options.Flags>, RegExp]> = [
      [{}, /one of --hub-kubeconfig or --source-secret-selector is required/],
      [{ hubKubeconfig: "/hub", sourceSecretSelector: "a=b" }, /exclude each other/],
      [{ hubKubeconfig: "/hub" }, /--hosting-cluster-name is required/],
      [{ hubKubeconfig: "/hub", hostingClusterName: "Hosting_1" }, /--hosting-cluster-name must be/],
      [{ sourceSecretSelector: "a=b", addons: " , " }, /--addons must name at least one/],
      [{ sourceSecretSelector: "a=b", addons: "ok,Not_Ok" }, /--addons: "Not_Ok"/],
      [{ sourceSecretSelector: "a=b", identityCheckInterval: Duration.zero }, /--identity-check-interval/],
      [{ sourceSecretSelector: "a=b", concurrency: 0 }, /--concurrency/],
      [{ sourceSecretSelector: "a=b", kubeApiQps: 0 }, /--kube-api-qps must be a number greater than 0/],
      [{ sourceSecretSelector: "a=b", kubeApiQps: Number.POSITIVE_INFINITY }, /--kube-api-qps/],
      [{ sourceSecretSelector: "a=b", kubeApiBurst: 0 }, /--kube-api-burst must be a whole number of at least 1/],
      [{ sourceSecretSelector: "a=b", kubeApiBurst: 1.5 }, /--kube-api-burst/],
      [{ sourceSecretSelector: "a=b", tokenExpiration: Duration.minutes(5) }, /token-expiration/],
      [{ sourceSecretSelector: "a=b", tokenFilePath: "token" }, /^--token-file-path: the token file path "token" must be absolute/],
      [{ sourceSecretSelector: "a=b", tokenFilePath: "/a/../token" }, /^--token-file-path: .*segment/]
    ]
    for (const [flags, expected] of table) assert.match(message(flags), expected, JSON.stringify(flags))
  })

  it("sharding: off without a Lease namespace; the flag or POD_NAMESPACE turns it on, named by POD_NAME or the host name", () => {
    const hubless = { ...base, sourceSecretSelector: "a=b" }
    assert.isUndefined(Result.getOrThrow(Options.resolve(hubless)).sharding)
    const fromEnv = Result.getOrThrow(Options.resolve(hubless, { podNamespace: "tether", podName: "cc-0", hostname: "Node-1" })).sharding
    assert.deepStrictEqual(fromEnv && [fromEnv.namespace, fromEnv.group, fromEnv.identity], ["tether", Options.shardGroup, "cc-0"])
    const byHost = Result.getOrThrow(Options.resolve({ ...hubless, shardLeaseNamespace: "ns" }, { hostname: "Node-1" })).sharding
    assert.deepStrictEqual(byHost && [byHost.namespace, byHost.identity], ["ns", "node-1"])
    const byFlag = Result.getOrThrow(Options.resolve({ ...hubless, shardIdentity: "r-2" }, { podNamespace: "tether", podName: "cc-0" })).sharding
    assert.strictEqual(byFlag?.identity, "r-2")
  })

  it("sharding: bad values name their flag", () => {
    const on = { sourceSecretSelector: "a=b", shardLeaseNamespace: "tether", shardIdentity: "r-1" }
    const table: Array<[Partial<Options.Flags>, RegExp]> = [
      [{ ...on, shardLeaseNamespace: "Bad_Ns" }, /--shard-lease-namespace/],
      [{ ...on, shardIdentity: "" }, /--shard-identity is required/],
      [{ ...on, shardIdentity: "Not A Name" }, /--shard-identity "Not A Name"/],
      [{ ...on, shardLeaseDuration: Duration.zero }, /--shard-lease-duration/],
      [{ ...on, shardRenewInterval: Duration.seconds(10) }, /--shard-renew-interval .*twice/]
    ]
    for (const [flags, expected] of table) assert.match(message(flags), expected, JSON.stringify(flags))
  })
})
