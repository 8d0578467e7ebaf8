/**
 * Discovery on real apiservers: from hub ManagedClusterAddOns across many namespaces, and
 * without a hub from labelled source Secrets on the hosting cluster. One watch connection per
 * resource kind whatever the number of objects (the apiserver's own `apiserver_registered_watchers`
 * gauge says so); creates, annotation changes and deletes are followed; a bad object is a
 * problem for its own pair only; Secret data never enters the cache.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as PairSource from "../../src/controller/PairSource.ts"
import * as Discovery from "../../src/domain/Discovery.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"
import { kubectl } from "../support/local.ts"
import { useTrio } from "../support/trio.ts"

const clusters = Array.from({ length: 12 }, (_, i) => `cluster${i}`)

/** The apiserver's count of registered watchers for `kind` (summed over versions). */
const watchers = (server: Apiserver.ApiserverInfo, kind: string) =>
  Effect.map(kubectl(server.kubeconfigPath, ["get", "--raw", "/metrics"]), (run) =>
    run.stdout
      .split("\n")
      .filter((line) => line.startsWith("apiserver_registered_watchers{") && line.includes(`kind="${kind}"`))
      .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0))

describe.skipIf(noApiserver)("PairSource (real apiservers)", () => {
  const trio = useTrio()

  it.live("hub: follows hosted ManagedClusterAddOns in every namespace with one watch", () =>
    Effect.gen(function*() {
      const hub = ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(trio.hub) })
      const addon = (cluster: string, annotations: Record<string, string>) => ({
        apiVersion: "addon.open-cluster-management.io/v1alpha1",
        kind: "ManagedClusterAddOn",
        metadata: { name: "cluster-proxy", namespace: cluster, annotations },
        spec: { installNamespace: "open-cluster-management-cluster-proxy" }
      })
      const create = (cluster: string, annotations: Record<string, string>) =>
        kubectl(trio.hub.kubeconfigPath, ["apply", "-f", "-"], JSON.stringify(addon(cluster, annotations)))
      for (const cluster of [...clusters, "elsewhere", "broken"]) yield* Apiserver.createNamespace(trio.hub, cluster)
      const here = (cluster: string) => ({
        [Discovery.hostingClusterAnnotation]: "hosting-1",
        [Discovery.annotations.targetNamespace]: `hosted-${cluster}`
      })
      for (const cluster of clusters) assert.strictEqual((yield* create(cluster, here(cluster))).code, 0)
      yield* create("elsewhere", { [Discovery.hostingClusterAnnotation]: "hosting-2" })
      yield* create("broken", { ...here("broken"), [Discovery.annotations.serviceAccountName]: "Not_Valid" })

      const before = yield* watchers(trio.hub, "ManagedClusterAddOn")
      const source = yield* PairSource.make({ _tag: "Hub", hub, config: { hostingClusterName: "hosting-1" } })
      const state = yield* until(source.current, (s) => s.synced && s.discovered.pairs.length === clusters.length, "all hosted add-ons discovered")
      assert.deepStrictEqual(state.discovered.pairs.map((p) => p.cluster), [...clusters].sort())
      assert.deepStrictEqual(state.discovered.problems.map((p) => [p.subject, p.reason]), [["broken/cluster-proxy", "InvalidOverride"]])
      const pair = state.discovered.pairs.find((p) => p.cluster === "cluster3")!
      assert.deepStrictEqual(pair.target, { namespace: "hosted-cluster3", name: "cluster-proxy-managed-kubeconfig" })
      assert.deepStrictEqual(pair.serviceAccount, { namespace: "open-cluster-management-cluster-proxy", name: "cluster-proxy" })
      assert.isString(pair.addonObject?.uid)
      // One more watch for twelve hosted add-ons in twelve namespaces.
      assert.strictEqual((yield* watchers(trio.hub, "ManagedClusterAddOn")) - before, 1)

      // A change, a fix and a delete are followed.
      yield* create("cluster3", { ...here("cluster3"), [Discovery.annotations.targetName]: "renamed" })
      yield* create("broken", here("broken"))
      assert.strictEqual((yield* kubectl(trio.hub.kubeconfigPath, ["delete", "managedclusteraddon", "-n", "cluster5", "cluster-proxy"])).code, 0)
      const after = yield* until(
        source.current,
        (s) =>
          s.discovered.pairs.some((p) => p.cluster === "broken") &&
          !s.discovered.pairs.some((p) => p.cluster === "cluster5") &&
          s.discovered.pairs.some((p) => p.target.name === "renamed"),
        "the change, the fix and the delete seen"
      )
      assert.deepStrictEqual(PairSource.diff(state.discovered, after.discovered), [
        "broken/cluster-proxy",
        "cluster3/cluster-proxy",
        "cluster5/cluster-proxy"
      ])
      assert.deepStrictEqual(after.discovered.problems, [])
      // Still one watch connection.
      assert.strictEqual((yield* watchers(trio.hub, "ManagedClusterAddOn")) - before, 1)
    }), 120_000)

  it.live("hubless: discovers from labelled source Secrets in every namespace and caches no Secret data", () =>
    Effect.gen(function*() {
      const hosting = ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(trio.hosting) })
      const names = ["m1", "m2", "m3"]
      for (const ns of [...names, "unlabelled"]) yield* Apiserver.createNamespace(trio.hosting, ns)
      for (const ns of names) {
        yield* hosting.createSecret(ns, {
          metadata: {
            name: "external-managed-kubeconfig",
            labels: { "tether.example/source": "yes" },
            annotations: { [Discovery.annotations.targetNamespace]: `addons-${ns}` }
          },
          stringData: { kubeconfig: "secret-kubeconfig-bytes" }
        })
      }
      yield* hosting.createSecret("unlabelled", { metadata: { name: "external-managed-kubeconfig" }, stringData: { kubeconfig: "x" } })
      const source = yield* PairSource.make({
        _tag: "Hubless",
        hosting,
        selector: "tether.example/source=yes",
        config: { addons: ["cluster-proxy"] }
      })
      const state = yield* until(source.current, (s) => s.synced && s.discovered.pairs.length === 3, "three sources discovered")
      assert.deepStrictEqual(
        state.discovered.pairs.map((p) => [p.key, p.sources, `${p.target.namespace}/${p.target.name}`]),
        names.map((ns) => [
          `${ns}/cluster-proxy`,
          [{ namespace: ns, name: "external-managed-kubeconfig" }],
          `addons-${ns}/cluster-proxy-managed-kubeconfig`
        ])
      )
      assert.notInclude(JSON.stringify(state), "secret-kubeconfig-bytes")
      yield* hosting.deleteSecret("m2", "external-managed-kubeconfig")
      yield* until(source.current, (s) => s.discovered.pairs.length === 2, "the deleted source's pair gone")
    }), 120_000)
})
