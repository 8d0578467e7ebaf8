/**
 * Discovery of (cluster, add-on) pairs: from hub ManagedClusterAddOns hosted here (defaults,
 * both source conventions, overrides, deletion) and from labelled source Secrets without a hub;
 * a bad object or a conflict is a problem for its own pairs only.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Discovery from "../../src/domain/Discovery.ts"

const hosted = (cluster: string, addon: string, extra: Record<string, string> = {}, installNamespace?: string) => ({
  metadata: {
    namespace: cluster,
    name: addon,
    uid: `uid-${cluster}-${addon}`,
    annotations: { [Discovery.hostingClusterAnnotation]: "hosting-1", ...extra }
  },
  spec: installNamespace === undefined ? {} : { installNamespace }
})

const hub = { hostingClusterName: "hosting-1" }

describe("Discovery", () => {
  describe("fromHub", () => {
    it("serves add-ons hosted on this cluster with the cluster-proxy defaults and both source conventions", () => {
      const { pairs, problems } = Discovery.fromHub([hosted("cluster1", "cluster-proxy", {}, "open-cluster-management-cluster-proxy")], hub)
      assert.deepStrictEqual(problems, [])
      assert.deepStrictEqual(pairs, [{
        key: "cluster1/cluster-proxy",
        cluster: "cluster1",
        addon: "cluster-proxy",
        serviceAccount: { namespace: "open-cluster-management-cluster-proxy", name: "cluster-proxy" },
        sources: [
          { namespace: "cluster1", name: "external-managed-kubeconfig" },
          { namespace: "klusterlet-cluster1", name: "external-managed-kubeconfig" }
        ],
        target: { namespace: "open-cluster-management-cluster-proxy", name: "cluster-proxy-managed-kubeconfig" },
        addonObject: { namespace: "cluster1", name: "cluster-proxy", uid: "uid-cluster1-cluster-proxy" },
        deleting: false
      }])
    })

    it("skips add-ons hosted elsewhere, not hosted, or not among --addons, without a problem", () => {
      const elsewhere = hosted("cluster2", "cluster-proxy", { [Discovery.hostingClusterAnnotation]: "hosting-2" })
      const local = { metadata: { namespace: "cluster3", name: "cluster-proxy" } }
      const other = hosted("cluster4", "observability")
      const { pairs, problems } = Discovery.fromHub([elsewhere, local, other, hosted("cluster5", "cluster-proxy")], {
        ...hub,
        addons: ["cluster-proxy"]
      })
      assert.deepStrictEqual(pairs.map((p) => p.key), ["cluster5/cluster-proxy"])
      assert.deepStrictEqual(problems, [])
      assert.strictEqual(pairs[0]!.target.namespace, Discovery.defaultInstallNamespace)
    })

    it("applies every override annotation; a pinned source or Klusterlet leaves one candidate", () => {
      const a = Discovery.annotations
      const { pairs } = Discovery.fromHub([
        hosted("c1", "cluster-proxy", {
          [a.serviceAccountNamespace]: "sa-ns",
          [a.serviceAccountName]: "minted",
          [a.targetNamespace]: "hosted-c1",
          [a.targetName]: "c1-kubeconfig",
          [a.sourceNamespace]: "admin",
          [a.sourceName]: "c1-admin"
        }),
        hosted("c2", "cluster-proxy", { [a.klusterletName]: "hosted-klusterlet-c2", [a.targetNamespace]: "hosted-c2" })
      ], hub)
      assert.deepStrictEqual(pairs.map((p) => [p.serviceAccount, p.sources, p.target]), [
        [{ namespace: "sa-ns", name: "minted" }, [{ namespace: "admin", name: "c1-admin" }], { namespace: "hosted-c1", name: "c1-kubeconfig" }],
        [
          { namespace: Discovery.defaultInstallNamespace, name: "cluster-proxy" },
          [{ namespace: "hosted-klusterlet-c2", name: "external-managed-kubeconfig" }],
          { namespace: "hosted-c2", name: "cluster-proxy-managed-kubeconfig" }
        ]
      ])
    })

    it("an invalid override is a problem for its pair only, naming the annotation and not its value", () => {
      const { pairs, problems } = Discovery.fromHub([
        hosted("c1", "cluster-proxy", { [Discovery.annotations.targetName]: "Not/A/Name-secret-value" }),
        hosted("c2", "cluster-proxy", { [Discovery.annotations.targetNamespace]: "c2-ns" })
      ], hub)
      assert.deepStrictEqual(pairs.map((p) => p.key), ["c2/cluster-proxy"])
      assert.strictEqual(problems.length, 1)
      assert.strictEqual(problems[0]!.reason, "InvalidOverride")
      assert.strictEqual(problems[0]!.subject, "c1/cluster-proxy")
      assert.include(problems[0]!.message, Discovery.annotations.targetName)
      assert.notInclude(problems[0]!.message, "secret-value")
    })

    it("refuses both pairs that would write one Secret, and a target that is a source", () => {
      // Same add-on of two clusters in one install namespace: the default target collides.
      const { pairs, problems } = Discovery.fromHub([
        hosted("c1", "cluster-proxy"),
        hosted("c2", "cluster-proxy"),
        hosted("c3", "cluster-proxy", { [Discovery.annotations.targetNamespace]: "c3" }),
        hosted("c4", "cluster-proxy", { [Discovery.annotations.targetNamespace]: "c4", [Discovery.annotations.targetName]: "external-managed-kubeconfig" })
      ], hub)
      assert.deepStrictEqual(pairs.map((p) => p.key), ["c3/cluster-proxy"])
      assert.deepStrictEqual(problems.map((p) => [p.subject, p.reason]), [
        ["c1/cluster-proxy", "TargetConflict"],
        ["c2/cluster-proxy", "TargetConflict"],
        ["c4/cluster-proxy", "TargetConflict"]
      ])
      assert.include(problems[0]!.message, "c2/cluster-proxy")
    })

    it("an add-on being deleted is still discovered, marked deleting; a bad installNamespace is a problem", () => {
      const deleting = hosted("c1", "cluster-proxy")
      const { pairs, problems } = Discovery.fromHub([
        { ...deleting, metadata: { ...deleting.metadata, deletionTimestamp: "2026-01-01T00:00:00Z" } },
        hosted("c2", "cluster-proxy", {}, "Bad_Namespace")
      ], hub)
      assert.deepStrictEqual(pairs.map((p) => [p.key, p.deleting]), [["c1/cluster-proxy", true]])
      assert.deepStrictEqual(problems.map((p) => [p.subject, p.reason]), [["c2/cluster-proxy", "InvalidName"]])
    })

    it.prop(
      "pairs are sorted, keys unique, targets unique and never a source; every hosted add-on is a pair or a problem",
      {
        objects: Schema.Array(Schema.Struct({
          cluster: Schema.Literals(["c1", "c2", "c3", "Bad"]),
          addon: Schema.Literals(["cluster-proxy", "observability"]),
          here: Schema.Boolean,
          target: Schema.optional(Schema.Literals(["c1", "shared", "bad_ns"])),
          install: Schema.optional(Schema.Literals(["ns-a", "ns-b"]))
        })).check(Schema.isMaxLength(12))
      },
      ({ objects }) => {
        const unique = new Map(objects.map((o) => [`${o.cluster}/${o.addon}`, o]))
        const addons = [...unique.values()].map((o) =>
          hosted(o.cluster, o.addon, {
            [Discovery.hostingClusterAnnotation]: o.here ? "hosting-1" : "other",
            ...(o.target === undefined ? {} : { [Discovery.annotations.targetNamespace]: o.target })
          }, o.install)
        )
        const { pairs, problems } = Discovery.fromHub(addons, hub)
        const keys = pairs.map((p) => p.key)
        assert.deepStrictEqual(keys, [...new Set(keys)].sort())
        const targets = pairs.map((p) => `${p.target.namespace}/${p.target.name}`)
        assert.strictEqual(new Set(targets).size, targets.length)
        const sources = new Set(pairs.flatMap((p) => p.sources.map((s) => `${s.namespace}/${s.name}`)))
        for (const t of targets) assert.isFalse(sources.has(t))
        const hostedHere = [...unique.values()].filter((o) => o.here).length
        assert.strictEqual(pairs.length + problems.length, hostedHere)
      }
    )
  })

  describe("fromSources (hubless)", () => {
    const secret = (namespace: string, name: string, extra: Record<string, string> = {}) => ({
      metadata: { namespace, name, annotations: extra }
    })

    it("a source in the cluster's namespace serves the default add-ons of that cluster, pinned to itself", () => {
      const { pairs, problems } = Discovery.fromSources([
        secret("cluster1", "external-managed-kubeconfig", { [Discovery.annotations.targetNamespace]: "cluster1-addons" })
      ], { addons: ["cluster-proxy"] })
      assert.deepStrictEqual(problems, [])
      assert.deepStrictEqual(pairs, [{
        key: "cluster1/cluster-proxy",
        cluster: "cluster1",
        addon: "cluster-proxy",
        serviceAccount: { namespace: Discovery.defaultInstallNamespace, name: "cluster-proxy" },
        sources: [{ namespace: "cluster1", name: "external-managed-kubeconfig" }],
        target: { namespace: "cluster1-addons", name: "cluster-proxy-managed-kubeconfig" },
        addonObject: undefined,
        deleting: false
      }])
    })

    it("annotations name the cluster, the add-ons and the install namespace (a klusterlet-namespace source)", () => {
      const a = Discovery.annotations
      const { pairs } = Discovery.fromSources([
        secret("klusterlet-cluster7", "external-managed-kubeconfig", {
          [a.clusterName]: "cluster7",
          [a.addons]: "cluster-proxy, observability",
          [a.installNamespace]: "klusterlet-cluster7"
        })
      ], { addons: ["cluster-proxy"] })
      assert.deepStrictEqual(pairs.map((p) => [p.key, p.serviceAccount.namespace, `${p.target.namespace}/${p.target.name}`]), [
        ["cluster7/cluster-proxy", "klusterlet-cluster7", "klusterlet-cluster7/cluster-proxy-managed-kubeconfig"],
        ["cluster7/observability", "klusterlet-cluster7", "klusterlet-cluster7/observability-managed-kubeconfig"]
      ])
    })

    it("two sources for one pair serve neither; a source naming no add-on is a problem; others are untouched", () => {
      const a = Discovery.annotations
      const { pairs, problems } = Discovery.fromSources([
        secret("c1", "external-managed-kubeconfig", { [a.targetNamespace]: "t1" }),
        secret("admin", "c1-copy", { [a.clusterName]: "c1", [a.targetNamespace]: "t1b" }),
        secret("c2", "external-managed-kubeconfig", { [a.addons]: " , " }),
        secret("c3", "external-managed-kubeconfig", { [a.targetNamespace]: "t3" })
      ], { addons: ["cluster-proxy"] })
      assert.deepStrictEqual(pairs.map((p) => p.key), ["c3/cluster-proxy"])
      assert.deepStrictEqual(problems.map((p) => [p.subject, p.reason]), [
        ["secret c2/external-managed-kubeconfig", "InvalidOverride"],
        ["c1/cluster-proxy", "TargetConflict"]
      ])
    })
  })
})
