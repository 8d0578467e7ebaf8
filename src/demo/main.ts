/**
 * `npm run demo`: the hosted-mode credential flow on three real kube-apiservers on loopback.
 *
 * 1. Starts hub, hosting and managed apiservers (the hub with the ManagedClusterAddOn CRD).
 * 2. Creates what OCM would: the source kubeconfig Secret on the hosting cluster, the
 *    `cluster-proxy` ServiceAccount on the managed cluster, the add-on on the hub.
 * 3. Runs the real `tether managed-kubeconfig-provisioner` CLI with a 10 minute token.
 * 4. Prints the generated Secret, its expiry and the hub condition as they change; edits the
 *    source to show a rotation within a second; then waits for the scheduled refresh (about five
 *    minutes in; `--quick` stops after the source-triggered rotation).
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { AuthenticationV1Api, CoreV1Api, CustomObjectsApi, type V1Secret } from "@kubernetes/client-node"
import { Console, Data, Duration, Effect, Schedule } from "effect"
import * as ChildProcess from "node:child_process"
import { fileURLToPath } from "node:url"
import * as ManagedKubeconfigSecret from "../domain/ManagedKubeconfigSecret.ts"
import { Apiserver, EnvtestAssets, Fixtures } from "../testing/index.ts"

class DemoTimeout extends Data.TaggedError("DemoTimeout")<{ readonly message: string }> {}

const quick = process.argv.includes("--quick")
const cluster = "cluster1"
const agentNamespace = "open-cluster-management-cluster-proxy"
const { group, plural, version } = Fixtures.managedClusterAddOnResource
const call = <A>(f: () => Promise<A>) => Effect.promise(f)
const b64 = (s: string) => Buffer.from(s).toString("base64")
const say = (line: string) => Console.log(`${new Date().toISOString().slice(11, 19)}  ${line}`)

const main = Effect.gen(function*() {
  yield* EnvtestAssets.ensure
  yield* say("starting three kube-apiservers (hub, hosting, managed) on loopback ...")
  const [hub, hosting, managed] = yield* Effect.all([
    Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
    Apiserver.make({ name: "hosting" }),
    Apiserver.make({ name: "managed" })
  ], { concurrency: "unbounded" })
  for (const info of [hub, hosting, managed]) yield* say(`  ${info.name.padEnd(8)} ${info.server}  kubeconfig ${info.kubeconfigPath}`)

  const hostingCore = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
  const managedCore = Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api)
  const hubCustom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)

  yield* say("creating the source kubeconfig Secret, the managed ServiceAccount and the hub add-on")
  for (const [info, ns] of [[hosting, cluster], [hosting, agentNamespace], [managed, agentNamespace], [hub, cluster]] as const) {
    yield* Apiserver.createNamespace(info, ns)
  }
  yield* call(() => managedCore.createNamespacedServiceAccount({ namespace: agentNamespace, body: { metadata: { name: "cluster-proxy" } } }))
  const source = (comment: string): V1Secret => ({
    metadata: { name: "external-managed-kubeconfig", namespace: cluster },
    data: { kubeconfig: b64(`${managed.kubeconfigYaml}${comment}`) }
  })
  yield* call(() => hostingCore.createNamespacedSecret({ namespace: cluster, body: source("") }))
  yield* call(() =>
    hubCustom.createNamespacedCustomObject({
      group,
      version,
      plural,
      namespace: cluster,
      body: { apiVersion: `${group}/${version}`, kind: "ManagedClusterAddOn", metadata: { name: "cluster-proxy" }, spec: { installNamespace: agentNamespace } }
    })
  )

  const args = [
    fileURLToPath(new URL("../cli/bin.ts", import.meta.url)),
    "managed-kubeconfig-provisioner",
    `--cluster-name=${cluster}`,
    `--target-namespace=${agentNamespace}`,
    `--kubeconfig=${hosting.kubeconfigPath}`,
    `--hub-kubeconfig=${hub.kubeconfigPath}`,
    "--token-expiration=10m",
    "--refresh-before=5m",
    "--health-probe-bind-address=127.0.0.1:18000"
  ]
  yield* say(`running: tether ${args.slice(1).join(" ")}`)
  yield* Effect.acquireRelease(
    Effect.sync(() => ChildProcess.spawn(process.execPath, args, { stdio: ["ignore", "ignore", "inherit"] })),
    (child) => Effect.sync(() => child.kill("SIGTERM"))
  )

  // Print what changes: the Secret's token window and the hub condition.
  let lastSecret = ""
  let lastCondition = ""
  let rotations = 0
  const observe = Effect.gen(function*() {
    const secret = yield* Effect.promise(() =>
      hostingCore.readNamespacedSecret({ namespace: agentNamespace, name: "cluster-proxy-managed-kubeconfig" }).catch(() => undefined)
    )
    const a = secret?.metadata?.annotations ?? {}
    const window = secret === undefined
      ? "absent"
      : `issued ${a[ManagedKubeconfigSecret.issuedAtAnnotation]}  expires ${a[ManagedKubeconfigSecret.expirationAnnotation]}  source ${a[ManagedKubeconfigSecret.sourceHashAnnotation]?.slice(0, 12)}`
    if (window !== lastSecret) {
      if (lastSecret !== "" && secret !== undefined) rotations++
      lastSecret = window
      yield* say(`Secret ${agentNamespace}/cluster-proxy-managed-kubeconfig: ${window}`)
      const token = Buffer.from(secret?.data?.["token"] ?? "", "base64").toString()
      if (token !== "") {
        const review = yield* call(() => Apiserver.kubeConfig(managed).makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token } } }))
        yield* say(`  TokenReview on the managed cluster: authenticated=${review.status?.authenticated} as ${review.status?.user?.username}`)
      }
    }
    const addon = (yield* call(() => hubCustom.getNamespacedCustomObject({ group, version, plural, namespace: cluster, name: "cluster-proxy" }))) as {
      status?: { conditions?: Array<{ type: string; status: string; reason: string; message: string; lastTransitionTime: string }> }
    }
    const c = addon.status?.conditions?.find((x) => x.type === "ManagedKubeconfigReady")
    const text = c === undefined ? "not set yet" : `${c.status} (${c.reason}) since ${c.lastTransitionTime}: ${c.message}`
    if (text !== lastCondition) {
      lastCondition = text
      yield* say(`hub condition ManagedKubeconfigReady: ${text}`)
    }
  })
  const watchUntil = (done: () => boolean, limit: Duration.Input) =>
    observe.pipe(
      Effect.repeat({ schedule: Schedule.spaced("250 millis"), until: () => done() }),
      Effect.timeoutOrElse({ duration: limit, orElse: () => Effect.fail(new DemoTimeout({ message: "the demo did not see the expected change in time" })) })
    )

  yield* watchUntil(() => lastSecret.startsWith("issued") && lastCondition.startsWith("True"), "60 seconds")
  yield* say("editing the source kubeconfig (a comment is enough to change its hash) ...")
  const before = rotations
  yield* call(() => hostingCore.replaceNamespacedSecret({ namespace: cluster, name: "external-managed-kubeconfig", body: source("\n# edited by the demo\n") }))
  yield* watchUntil(() => rotations > before, "10 seconds")
  yield* say("rotated after the source change")
  if (quick) return yield* say("done (--quick). Without --quick the demo also waits for the scheduled refresh.")
  yield* say("waiting for the scheduled refresh: at half of the 10 minute lifetime, minus up to 10 s of jitter ...")
  const beforeScheduled = rotations
  yield* watchUntil(() => rotations > beforeScheduled, "7 minutes")
  yield* say("refreshed on schedule; metrics were at http://127.0.0.1:18000/metrics. done.")
}).pipe(Effect.scoped)

NodeRuntime.runMain(main.pipe(Effect.tapError((error) => Console.error(String(error)))), { disableErrorReporting: true })
