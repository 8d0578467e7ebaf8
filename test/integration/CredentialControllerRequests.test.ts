/**
 * What the credential controller's work costs the apiservers, counted from their audit logs
 * (three real, audited kube-apiservers; the controller in this process):
 * - a routine rotation (the token in place due, nothing else changed) is one TokenRequest and
 *   one Secret write per pair, and nothing on the hub and no Event: the condition already says
 *   the Secret is good, in words a rotation does not make false;
 * - the real process started on 24 pairs with `--kube-api-qps=10 --kube-api-burst=5`: the burst
 *   of start-up work (a TokenRequest, a Secret, a condition and an Event per pair) reaches the
 *   three apiservers together at no more than the limit in any window.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Discovery from "../../src/domain/Discovery.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { clientsOf, hostPairs, readyCondition, reconciles, spawnController, startController } from "../support/credentialController.ts"
import { dueSoon } from "../support/dueToken.ts"
import { until } from "../support/eventually.ts"
import { freePort, get, kubectl } from "../support/local.ts"
import { makeTrio } from "../support/trio.ts"

const target = "cluster-proxy-managed-kubeconfig"
const agent = "tether-requests-test"

describe.skipIf(noApiserver)("CredentialController requests (real audited apiservers)", () => {
  it.live("a routine rotation costs one TokenRequest and one Secret write per pair: no hub request, no Event", () =>
    Effect.gen(function*() {
      const clusters = yield* makeTrio({ suffix: "rq", auditLog: true })
      const { hub, hosting, managed } = clusters
      const names = ["q1", "q2", "q3"]
      yield* hostPairs(clusters, names, "hosting-rq")
      const { hostingClient, hostingTest, hubClient, hubTest } = clientsOf(clusters, agent)

      const probes = yield* startController(hostingClient, hubClient, "hosting-rq")
      const condition = (cluster: string) => readyCondition(hubTest, cluster)
      for (const cluster of names) yield* until(condition(cluster), (c) => c?.["status"] === "True", `${cluster} Ready`, { timeout: "60 seconds" })
      // Ready (its check registered long before a condition was written): every pair's first
      // reconcile (mint, write, condition, Event) has returned.
      yield* until(probes.readiness, (failing) => failing.length === 0, "ready", { timeout: "60 seconds" })
      const firstConditions = yield* Effect.forEach(names, condition)
      for (const c of firstConditions) {
        assert.strictEqual(c?.["status"], "True")
        assert.strictEqual(c?.["reason"], "ManagedKubeconfigCreated")
        assert.notInclude(c?.["message"] ?? "", "expires", "the message names no time a rotation changes")
      }

      const logged = Effect.all([Apiserver.auditEvents(hub), Apiserver.auditEvents(hosting), Apiserver.auditEvents(managed)])
      const [hubBefore, hostingBefore, managedBefore] = (yield* logged).map((events) => events.length) as [number, number, number]
      const reconcilesBefore = yield* reconciles

      // Every pair's token falls due; each is rotated by the reconcile its Secret's change starts.
      const expiryOf = (cluster: string) =>
        Effect.map(hostingTest.getSecret(`addon-${cluster}`, target), (s) => Date.parse(s.metadata?.annotations?.[ManagedKubeconfigSecret.expirationAnnotation] ?? ""))
      for (const cluster of names) {
        const secret = yield* hostingTest.getSecret(`addon-${cluster}`, target)
        yield* hostingTest.replaceSecret(`addon-${cluster}`, dueSoon(secret))
      }
      for (const cluster of names) {
        yield* until(expiryOf(cluster), (at) => at > Date.now() + 30 * 60_000, `${cluster} rotated`, { timeout: "30 seconds" })
      }
      // Those three reconciles have returned (report included): whatever they sent is in the logs.
      yield* until(reconciles, (n) => n >= reconcilesBefore + names.length, "the rotations' reconciles returned", { timeout: "30 seconds" })

      const describeRequest = (e: Apiserver.AuditEvent) =>
        `${e.verb} ${e.objectRef?.resource ?? e.requestURI}${e.objectRef?.subresource === undefined ? "" : `/${e.objectRef.subresource}`}`
      const sent = (events: ReadonlyArray<Apiserver.AuditEvent>, from: number, userAgent: string) =>
        events.slice(from)
          .filter((e) => e.stage === "ResponseComplete" && e.verb !== "watch" && (e.userAgent ?? "").startsWith(userAgent))
          .map(describeRequest)
      const [hubAfter, hostingAfter, managedAfter] = yield* logged
      assert.deepStrictEqual(sent(hubAfter, hubBefore, agent), [], "hub requests for routine rotations")
      assert.deepStrictEqual(sent(hostingAfter, hostingBefore, agent), names.map(() => "update secrets"), "hosting requests: one Secret write each, no Event")
      assert.deepStrictEqual(sent(managedAfter, managedBefore, "tether"), names.map(() => "create serviceaccounts/token"), "managed requests: one TokenRequest each")
      // The condition still tells the truth, untouched.
      assert.deepStrictEqual(yield* Effect.forEach(names, condition), firstConditions)
    }), 180_000)

  it.live("the real process: a burst of start-up work reaches the three apiservers within --kube-api-qps and --kube-api-burst", () =>
    Effect.gen(function*() {
      const { hub, hosting, managed } = yield* makeTrio({ suffix: "rl", auditLog: true })
      // 24 pairs, each pointed by annotations at its own ServiceAccount, source and target.
      const pairs = 24
      const prefix = "credentials.tether.open-cluster-management.io"
      const hubTest = ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(hub) })
      const hostingTest = ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(hosting) })
      yield* Apiserver.createNamespace(hosting, "sources")
      yield* Apiserver.createNamespace(hosting, "targets")
      for (let i = 0; i < pairs; i++) {
        yield* Apiserver.serviceAccountToken(managed, "sas", `sa-${i}`, 600)
        yield* hostingTest.createSecret("sources", {
          metadata: { name: `src-${i}` },
          data: { kubeconfig: Buffer.from(`${managed.kubeconfigYaml}\n# pair ${i}\n`).toString("base64") }
        })
        yield* Apiserver.createNamespace(hub, `c${i}`)
        const created = yield* kubectl(hub.kubeconfigPath, ["apply", "-f", "-"], JSON.stringify({
          apiVersion: "addon.open-cluster-management.io/v1alpha1",
          kind: "ManagedClusterAddOn",
          metadata: {
            name: "cluster-proxy",
            namespace: `c${i}`,
            annotations: {
              [Discovery.hostingClusterAnnotation]: "hosting-rl",
              [`${prefix}/service-account-namespace`]: "sas",
              [`${prefix}/service-account-name`]: `sa-${i}`,
              [`${prefix}/source-namespace`]: "sources",
              [`${prefix}/source-name`]: `src-${i}`,
              [`${prefix}/target-namespace`]: "targets",
              [`${prefix}/target-name`]: `kc-${i}`
            }
          },
          spec: { installNamespace: `addon-c${i}` }
        }))
        assert.strictEqual(created.code, 0, created.stderr)
      }

      const [qps, burst] = [10, 5]
      const probePort = yield* freePort
      const { output } = yield* spawnController([
        `--kubeconfig=${hosting.kubeconfigPath}`, `--hub-kubeconfig=${hub.kubeconfigPath}`,
        "--hosting-cluster-name=hosting-rl", "--token-expiration=1h", "--refresh-before=10m",
        `--kube-api-qps=${qps}`, `--kube-api-burst=${burst}`,
        `--health-probe-bind-address=127.0.0.1:${probePort}`
      ])
      // Ready: every pair's first reconcile (TokenRequest, Secret, condition, Event) has returned.
      yield* until(get(`http://127.0.0.1:${probePort}/readyz`), (r) => r.status === 200, "ready", { timeout: "120 seconds" }).pipe(
        Effect.tapError(() => Effect.sync(() => console.log(output().slice(-3000))))
      )
      for (let i = 0; i < pairs; i++) {
        const condition = yield* readyCondition(hubTest, `c${i}`)
        assert.strictEqual(condition?.["status"], "True", `c${i}`)
      }

      // Every request of the process (by its user agents) but the watches' list and watch calls,
      // on one time line: the three apiservers run on this machine's clock.
      const ours = (e: Apiserver.AuditEvent) =>
        e.stage === "ResponseComplete" && e.verb !== "watch" && e.verb !== "list" &&
        ((e.userAgent ?? "").startsWith("tether-credential-controller") || (e.userAgent ?? "").startsWith("tether-managed-kubeconfig-provisioner"))
      const events = (yield* Effect.all([Apiserver.auditEvents(hub), Apiserver.auditEvents(hosting), Apiserver.auditEvents(managed)])).flat().filter(ours)
      const times = events.map((e) => Date.parse(e.requestReceivedTimestamp)).sort((a, b) => a - b)
      assert.isAtLeast(times.length, 4 * pairs, "a TokenRequest, a Secret, a condition and an Event per pair")
      // The bound holds where requests leave the process; on arrival, two requests may come closer
      // by the spread of their transit times (the machine is shared): allowed up to one second.
      const slackMs = 1000
      for (let i = 0; i < times.length; i++) {
        for (let j = i; j < times.length; j++) {
          const bound = burst + (qps * (times[j]! - times[i]! + slackMs)) / 1000
          assert.isAtMost(j - i + 1, bound, `${j - i + 1} requests within ${times[j]! - times[i]!} ms`)
        }
      }
      assert.notInclude(output(), "eyJ", "no token in the logs")
    }), 240_000)
})
