/**
 * The credential controller's identity behaviours on three real, audited apiservers (issue #12):
 * - between deadlines the only requests besides the watches are the identity checks, at most
 *   one per pair per interval (counted from the apiservers' audit logs);
 * - a ServiceAccount deleted and re-created on the managed cluster: the old token is blanked,
 *   then a new one that authenticates as the new ServiceAccount (TokenReview), condition
 *   ServiceAccountRecreated; a deleted one: blanked, condition False ServiceAccountNotFound;
 * - a source naming another server: blanked, then a new token, ManagedClusterConnectionChanged;
 * - the generated Secret listed once in the add-on's relatedObjects, others' entries kept;
 * - deletes name the UID they expect: a same-named Secret made by someone else survives the
 *   add-on's deletion, and a delete with a stale UID is refused by the apiserver.
 */
import { assert, describe, it } from "@effect/vitest"
import type { V1Secret } from "@kubernetes/client-node"
import { Duration, Effect, Fiber, Layer, Result, Stream } from "effect"
import * as CredentialController from "../../src/controller/CredentialController.ts"
import * as SecretCache from "../../src/controller/SecretCache.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import { HostingCluster } from "../../src/kube/KubeClient.ts"
import * as KubeError from "../../src/kube/KubeError.ts"
import { managedClusterAddOns } from "../../src/provisioner/AddonStatus.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { clientsOf, controllerPorts, hostPairs, readyCondition, settings } from "../support/credentialController.ts"
import { until } from "../support/eventually.ts"
import { kubectl } from "../support/local.ts"
import { makeTrio } from "../support/trio.ts"

const target = "cluster-proxy-managed-kubeconfig"
const agent = "tether-identity-test"
const intervalMs = 4_000

describe.skipIf(noApiserver)("CredentialController identity (real audited apiservers)", () => {
  it.live("identity checks bounded; re-created or deleted ServiceAccount and changed server fail closed; relatedObjects; UID-checked deletes", () =>
    Effect.gen(function*() {
      const clusters = yield* makeTrio({ suffix: "id", auditLog: true })
      const { hub, hosting, managed } = clusters
      const names = ["i1", "i2", "i3"]
      yield* hostPairs(clusters, names, "hosting-id")
      // Someone else's entry in i1's relatedObjects, before the controller starts.
      const { hostingClient, hostingTest, hubClient, hubTest, managedTest } = clientsOf(clusters, agent)
      const theirs = { group: "example.io", resource: "widgets", name: "w1" }
      const i1 = yield* hubTest.getCustomObject(managedClusterAddOns, "i1", "cluster-proxy")
      yield* hubTest.replaceCustomObjectStatus(managedClusterAddOns, { ...i1, status: { relatedObjects: [theirs] } })

      // Every Secret version the hosting apiserver shows for a pair, in order (a test-side watch).
      const seen = new Map<string, Array<string>>()
      const watcher = yield* hostingTest.watchAllSecrets({ fieldSelector: `metadata.name=${target}` }).pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            const objects: ReadonlyArray<V1Secret> = event._tag === "Synced" ? event.items : event._tag === "Broken" ? [] : [event.object]
            for (const secret of objects) {
              const ns = secret.metadata?.namespace ?? ""
              const list = seen.get(ns) ?? []
              const token = Buffer.from(secret.data?.["token"] ?? "", "base64").toString()
              if (list.at(-1) !== token) list.push(token)
              seen.set(ns, list)
            }
          })
        ),
        Effect.forkScoped
      )

      yield* CredentialController.run({
        source: { _tag: "Hub", hub: hubClient, config: { hostingClusterName: "hosting-id" } },
        settings,
        identityCheckInterval: Duration.millis(intervalMs)
      }).pipe(Effect.provide(controllerPorts(hostingClient, hubClient)), Effect.forkScoped)

      const addon = (cluster: string) => hubTest.getCustomObject(managedClusterAddOns, cluster, "cluster-proxy")
      const condition = (cluster: string) => readyCondition(hubTest, cluster)
      const secretOf = (cluster: string) => hostingTest.getSecret(`addon-${cluster}`, target)
      const tokenOf = (cluster: string) => Effect.map(secretOf(cluster), (s) => Buffer.from(s.data?.["token"] ?? "", "base64").toString())
      const saUid = (cluster: string) => Effect.map(managedTest.getServiceAccount(`addon-${cluster}`, "cluster-proxy"), (sa) => sa.metadata?.uid)
      for (const cluster of names) {
        yield* until(condition(cluster), (c) => c?.["status"] === "True", `${cluster} Ready`, { timeout: "60 seconds" })
        const secret = yield* secretOf(cluster)
        assert.strictEqual(secret.metadata?.annotations?.[ManagedKubeconfigSecret.serviceAccountUidAnnotation], yield* saUid(cluster))
        assert.isString(secret.metadata?.annotations?.[ManagedKubeconfigSecret.connectionHashAnnotation])
      }

      // relatedObjects: ours once (whatever the number of writes), theirs kept.
      const related = (cluster: string) =>
        Effect.map(addon(cluster), (o) => (o.status?.["relatedObjects"] ?? []) as Array<Record<string, string>>)
      const i1Related = yield* related("i1")
      assert.deepInclude(i1Related, theirs)
      assert.strictEqual(i1Related.filter((r) => r["resource"] === "secrets" && r["name"] === target).length, 1)
      for (const cluster of ["i2", "i3"]) {
        const list = yield* related(cluster)
        assert.deepStrictEqual(list.map((r) => [r["group"], r["resource"], r["name"], r["namespace"]]), [["", "secrets", target, `addon-${cluster}`]])
      }

      // Idle: the only non-watch requests of the controller are identity checks, at most one per
      // pair per interval. The window spans more than two intervals, so each pair checks at least once.
      const windowStart = Date.now()
      yield* Effect.sleep(Duration.millis(2.6 * intervalMs))
      const windowEnd = Date.now()
      const inWindow = (e: Apiserver.AuditEvent) => {
        const at = Date.parse(e.requestReceivedTimestamp)
        return at >= windowStart && at < windowEnd && e.stage === "ResponseComplete"
      }
      for (const info of [hub, hosting]) {
        const others = (yield* Apiserver.auditEvents(info)).filter((e) => inWindow(e) && e.userAgent?.startsWith(agent) && e.verb !== "watch")
        assert.deepStrictEqual(others.map((e) => `${e.verb} ${e.requestURI}`), [], `${info.name}: no request but watches`)
      }
      const managedEvents = (yield* Apiserver.auditEvents(managed)).filter((e) => inWindow(e) && e.userAgent?.startsWith("tether"))
      const checks = managedEvents.filter((e) => e.verb === "get" && e.objectRef?.resource === "serviceaccounts")
      assert.deepStrictEqual(managedEvents.filter((e) => !checks.includes(e)).map((e) => `${e.verb} ${e.requestURI}`), [], "managed: only identity checks")
      for (const cluster of names) {
        const times = checks.filter((e) => e.objectRef?.namespace === `addon-${cluster}`).map((e) => Date.parse(e.requestReceivedTimestamp))
        assert.isAtLeast(times.length, 1, `${cluster} checked in the window`)
        assert.isAtMost(times.length, 3, `${cluster}: at most one check per interval`)
        for (let i = 1; i < times.length; i++) assert.isAtLeast(times[i]! - times[i - 1]!, intervalMs - 250, `${cluster}: checks an interval apart`)
      }

      // i1: the ServiceAccount deleted and re-created (one kubectl call, no gap to speak of).
      const oldToken = yield* tokenOf("i1")
      const oldUid = yield* saUid("i1")
      const recreate = yield* kubectl(managed.kubeconfigPath, ["replace", "--force", "-f", "-"], JSON.stringify({
        apiVersion: "v1",
        kind: "ServiceAccount",
        metadata: { name: "cluster-proxy", namespace: "addon-i1" }
      }))
      assert.strictEqual(recreate.code, 0, recreate.stderr)
      const newUid = yield* saUid("i1")
      assert.notStrictEqual(newUid, oldUid)
      const recreated = yield* until(condition("i1"), (c) => c?.["reason"] === "ServiceAccountRecreated", "i1 re-minted", {
        timeout: "30 seconds"
      })
      assert.strictEqual(recreated?.["status"], "True")
      assert.include(recreated?.["message"] ?? "", "blanked")
      const newToken = yield* tokenOf("i1")
      assert.notStrictEqual(newToken, oldToken)
      const history = seen.get("addon-i1") ?? []
      const at = history.indexOf(oldToken)
      assert.deepStrictEqual(history.slice(at, at + 3), [oldToken, "", newToken], "blanked before the new token")
      const review = yield* managedTest.createTokenReview({ spec: { token: newToken } })
      assert.isTrue(review.status?.authenticated)
      assert.strictEqual(review.status?.user?.username, "system:serviceaccount:addon-i1:cluster-proxy")
      assert.strictEqual(review.status?.user?.uid, newUid)
      assert.strictEqual((yield* secretOf("i1")).metadata?.annotations?.[ManagedKubeconfigSecret.serviceAccountUidAnnotation], newUid)

      // i2: the ServiceAccount deleted: blanked, False with its reason.
      const del = yield* kubectl(managed.kubeconfigPath, ["delete", "serviceaccount", "-n", "addon-i2", "cluster-proxy"])
      assert.strictEqual(del.code, 0, del.stderr)
      const missing = yield* until(condition("i2"), (c) => c?.["status"] === "False", "i2 not Ready", { timeout: "30 seconds" })
      assert.strictEqual(missing?.["reason"], "ServiceAccountNotFound")
      assert.strictEqual(yield* tokenOf("i2"), "", "the token of a deleted ServiceAccount is blanked")

      // i3: the source names the same apiserver by another name: blanked, then a new token.
      const i3Token = yield* tokenOf("i3")
      const source = yield* hostingTest.getSecret("i3", "external-managed-kubeconfig")
      const port = new URL(managed.server).port
      const moved = managed.kubeconfigYaml.split(managed.server).join(`https://localhost:${port}`)
      assert.notStrictEqual(moved, managed.kubeconfigYaml)
      yield* hostingTest.replaceSecret("i3", { ...source, data: { kubeconfig: Buffer.from(moved).toString("base64") } })
      const changed = yield* until(condition("i3"), (c) => c?.["reason"] === "ManagedClusterConnectionChanged", "i3 re-minted", {
        timeout: "30 seconds"
      })
      assert.strictEqual(changed?.["status"], "True")
      const i3New = yield* tokenOf("i3")
      const i3History = seen.get("addon-i3") ?? []
      const i3At = i3History.indexOf(i3Token)
      assert.deepStrictEqual(i3History.slice(i3At, i3At + 3), [i3Token, "", i3New], "blanked before the new token")
      assert.include(Buffer.from((yield* secretOf("i3")).data?.["kubeconfig"] ?? "", "base64").toString(), `https://localhost:${port}`)

      // Deletes name the UID they expect. The apiserver refuses a stale UID ...
      const store = yield* Effect.service(SecretStore).pipe(
        Effect.provide(SecretStore.layer.pipe(Layer.provide(Layer.succeed(HostingCluster, hostingTest))))
      )
      yield* hostingTest.createSecret("addon-i3", { metadata: { name: "scratch" }, data: { a: "Yg==" } })
      const scratch = yield* hostingTest.getSecret("addon-i3", "scratch")
      yield* hostingTest.deleteSecret("addon-i3", "scratch")
      yield* hostingTest.createSecret("addon-i3", { metadata: { name: "scratch" }, data: { a: "Yw==" } })
      const refused = yield* Effect.flip(store.delete("addon-i3", "scratch", { uid: scratch.metadata!.uid! }))
      assert.isTrue(KubeError.isReason("Conflict")(refused), refused.message)
      // The same through the controller's own Secret port (the watch-backed cache).
      const cache = yield* SecretCache.make(hostingTest, () => Effect.void)
      const refusedByCache = yield* Effect.flip(cache.store.delete("addon-i3", "scratch", { uid: scratch.metadata!.uid! }))
      assert.isTrue(KubeError.isReason("Conflict")(refusedByCache), refusedByCache.message)
      assert.strictEqual((yield* hostingTest.getSecret("addon-i3", "scratch")).data?.["a"], "Yw==", "the re-created Secret survives")

      // ... and a Secret someone else re-created (our annotations copied, another UID) survives the add-on's deletion.
      const patch = yield* kubectl(hub.kubeconfigPath, [
        "patch", "managedclusteraddon", "-n", "i3", "cluster-proxy", "--type=merge", "-p", JSON.stringify({ metadata: { finalizers: ["example.io/hold"] } })
      ])
      assert.strictEqual(patch.code, 0, patch.stderr)
      const annotations = (yield* secretOf("i3")).metadata?.annotations ?? {}
      const deleting = yield* kubectl(hub.kubeconfigPath, ["delete", "managedclusteraddon", "-n", "i3", "cluster-proxy", "--wait=false"])
      assert.strictEqual(deleting.code, 0, deleting.stderr)
      yield* until(Effect.result(secretOf("i3")), Result.isFailure, "i3's Secret deleted", { timeout: "30 seconds" })
      const foreign = yield* hostingTest.createSecret("addon-i3", { metadata: { name: target, annotations }, data: { note: "bWluZQ==" } })
      const events = Effect.map(
        kubectl(hosting.kubeconfigPath, ["get", "events", "-n", "addon-i3", "-o", "json"]),
        (run) => (JSON.parse(run.stdout || "{}") as { items?: Array<{ reason?: string; message?: string }> }).items ?? []
      )
      const kept = yield* until(events, (items) => items.some((e) => e.reason === "ManagedKubeconfigNotDeleted"), "the foreign Secret judged", {
        timeout: "30 seconds"
      })
      assert.include(kept.find((e) => e.reason === "ManagedKubeconfigNotDeleted")?.message ?? "", foreign.metadata!.uid!)
      const survivor = yield* secretOf("i3")
      assert.strictEqual(survivor.metadata?.uid, foreign.metadata?.uid, "someone else's Secret survives")
      assert.strictEqual(survivor.data?.["note"], "bWluZQ==")
      yield* kubectl(hub.kubeconfigPath, ["patch", "managedclusteraddon", "-n", "i3", "cluster-proxy", "--type=merge", "-p", "{\"metadata\":{\"finalizers\":null}}"])
      yield* Fiber.interrupt(watcher)
    }).pipe(Effect.scoped), 240_000)
})
