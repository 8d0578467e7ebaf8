/**
 * The managed-kubeconfig provisioner against three real kube-apiservers: hosting (source and
 * generated Secrets), managed (ServiceAccount, TokenRequest, TokenReview) and hub
 * (ManagedClusterAddOn condition). Each test uses its own cluster name and namespaces.
 */
import { assert, beforeAll, describe, it } from "@effect/vitest"
import { AuthenticationV1Api, CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api, type V1Secret } from "@kubernetes/client-node"
import { Duration, Effect, Exit, Logger, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Conditions from "../../src/domain/Conditions.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import type * as Provisioner from "../../src/provisioner/Provisioner.ts"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { eventually, until } from "../support/eventually.ts"
import { freePort, get } from "../support/local.ts"
import { b64, call, provisioning, reconciles } from "../support/provisioner.ts"
import { useTrio } from "../support/trio.ts"
import { noApiserver } from "../support/apiserver.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const unb64 = (s: string | undefined) => Buffer.from(s ?? "", "base64").toString("utf8")
const { group, plural, version } = Fixtures.managedClusterAddOnResource

/** Every log line the provisioners of this file write, checked for tokens at the end. */
const logLines: Array<string> = []
const seenTokens = new Set<string>()
const captureLogs = Logger.layer([Logger.map(Logger.formatJson, (line) => void logLines.push(line))])

describe.skipIf(noApiserver)("managed-kubeconfig-provisioner (real apiservers)", () => {
  const clusters = useTrio()
  let hub!: Apiserver.ApiserverInfo
  let hosting!: Apiserver.ApiserverInfo
  let managed!: Apiserver.ApiserverInfo
  beforeAll(() => {
    ;({ hub, hosting, managed } = clusters)
  })

  const api = {
    hostingCore: () => Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api),
    managedCore: () => Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api),
    managedAuthn: () => Apiserver.kubeConfig(managed).makeApiClient(AuthenticationV1Api),
    managedRbac: () => Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api),
    hubCustom: () => Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
  }
  const provisioner = provisioning(clusters)
  const { changeSource, condition, readTarget } = provisioner

  /** Namespaces, source Secret, managed ServiceAccount and hub add-on for one cluster. */
  const setUp = (cluster: string, sourceKubeconfig?: string) =>
    provisioner.setUp(cluster, { source: sourceKubeconfig ?? managed.kubeconfigYaml, syncInterval: Duration.minutes(5) })

  /** Start a provisioner in the test's scope; returns its probes. */
  const start = (options: Provisioner.Options) => provisioner.start(options, { logs: captureLogs })

  const targetReady = (options: Provisioner.Options) =>
    eventually(readTarget(options))

  /** Reasons of the Events about the generated Secret, oldest first. */
  const eventReasons = (options: Provisioner.Options) =>
    call(() => api.hostingCore().listNamespacedEvent({ namespace: options.target.namespace })).pipe(
      Effect.map((list) =>
        list.items
          .filter((e) => e.involvedObject.name === options.target.name)
          .sort((a, b) => String(a.metadata?.creationTimestamp).localeCompare(String(b.metadata?.creationTimestamp)))
          .map((e) => e.reason)
      )
    )

  const remember = (secret: V1Secret) => {
    const token = unb64(secret.data?.["token"])
    if (token !== "") seenTokens.add(token)
    return token
  }

  it.live("creates the Secret whose token authenticates as the managed ServiceAccount, and reports Ready", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-create")
      const probes = yield* start(options)
      const secret = yield* targetReady(options)
      const token = remember(secret)
      assert.strictEqual(secret.type, "Opaque")
      const annotations = secret.metadata?.annotations ?? {}
      assert.isDefined(annotations[ManagedKubeconfigSecret.expirationAnnotation])
      assert.isDefined(annotations[ManagedKubeconfigSecret.issuedAtAnnotation])
      assert.isDefined(annotations[ManagedKubeconfigSecret.sourceHashAnnotation])
      const kubeconfig = unb64(secret.data?.["kubeconfig"])
      assert.include(kubeconfig, managed.server)
      assert.include(kubeconfig, "certificate-authority-data")
      assert.include(kubeconfig, token)

      const review = yield* call(() => api.managedAuthn().createTokenReview({ body: { spec: { token } } }))
      assert.isTrue(review.status?.authenticated)
      assert.strictEqual(review.status?.user?.username, "system:serviceaccount:agent-c-create:cluster-proxy")

      const ready = yield* until(condition(options), (c) => c.status === "True", "not True")
      assert.strictEqual(ready.reason, "ManagedKubeconfigCreated")
      yield* until(probes.readiness, (failures) => failures.length === 0, "ready")
    }))

  it.live("rotates within a second of a source change, keeping others' labels and annotations, with a stable lastTransitionTime", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-rotate")
      yield* start(options)
      const first = yield* targetReady(options)
      remember(first)
      const firstReady = yield* until(condition(options), (c) => c.status === "True", "condition True")
      // Someone else decorates the Secret; the provisioner must keep that.
      yield* call(() => api.hostingCore().replaceNamespacedSecret({
        ...options.target,
        body: { ...first, metadata: { ...first.metadata, labels: { team: "infra" }, annotations: { ...first.metadata?.annotations, "example.com/owner": "ops" } } }
      }))
      for (const round of [1, 2]) {
        const before = yield* readTarget(options)
        const beforeHash = before.metadata?.annotations?.[ManagedKubeconfigSecret.sourceHashAnnotation]
        yield* changeSource(options, `${managed.kubeconfigYaml}\n# rotation ${round}\n`)
        const rotated = yield* until(readTarget(options), (s) => s.metadata?.annotations?.[ManagedKubeconfigSecret.sourceHashAnnotation] !== beforeHash, "not rotated",
          { timeout: "1 second", interval: "25 millis" })
        remember(rotated)
        // Two TokenRequests within one second can yield the same JWT, so compare the write, not the token.
        assert.notStrictEqual(rotated.metadata?.resourceVersion, before.metadata?.resourceVersion)
        assert.strictEqual(rotated.metadata?.labels?.["team"], "infra")
        assert.strictEqual(rotated.metadata?.annotations?.["example.com/owner"], "ops")
      }
      const after = yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigUpdated", "not updated")
      // One event per transition: the creation and each rotation, nothing per sync.
      const reasons = yield* until(eventReasons(options), (r) => r.length >= 3, "three events")
      assert.deepStrictEqual([...reasons].sort(), ["ManagedKubeconfigCreated", "ManagedKubeconfigUpdated", "ManagedKubeconfigUpdated"])
      assert.strictEqual(after.status, "True")
      assert.strictEqual(after.lastTransitionTime, firstReady.lastTransitionTime)
    }))

  it.live("re-creates the Secret when it is deleted", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-recreate")
      yield* start(options)
      const first = yield* targetReady(options)
      remember(first)
      yield* call(() => api.hostingCore().deleteNamespacedSecret(options.target))
      const again = yield* until(readTarget(options), (s) => s.metadata?.uid !== first.metadata?.uid, "same")
      remember(again)
      assert.isDefined(again.data?.["kubeconfig"])
    }))

  it.live("keeps serving a valid token when TokenRequest fails, reports it, and recovers with backoff", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-stale")
      yield* start(options)
      const good = yield* targetReady(options)
      remember(good)
      // The managed ServiceAccount disappears; a source change now needs a token it cannot get.
      yield* call(() => api.managedCore().deleteNamespacedServiceAccount(options.serviceAccount))
      yield* changeSource(options, `${managed.kubeconfigYaml}\n# stale\n`)
      const pending = yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigRefreshPending", "refresh pending")
      assert.strictEqual(pending.status, "True")
      assert.include(pending.message, "ServiceAccountNotFound")
      const kept = yield* readTarget(options)
      assert.strictEqual(kept.metadata?.resourceVersion, good.metadata?.resourceVersion)
      // Back: the next retry succeeds without any other trigger.
      yield* call(() => api.managedCore().createNamespacedServiceAccount({ namespace: options.serviceAccount.namespace, body: { metadata: { name: options.serviceAccount.name } } }))
      const recovered = yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigUpdated", "recovered", { timeout: "30 seconds" })
      assert.strictEqual(recovered.lastTransitionTime, pending.lastTransitionTime)
      remember(yield* readTarget(options))
    }))

  it.live("shares the add-on status with other writers: their conditions survive ours", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-shared-status")
      yield* start(options)
      remember(yield* targetReady(options))
      yield* until(condition(options), (c) => c.status === "True", "ready")
      const addon = yield* call(() => api.hubCustom().getNamespacedCustomObject({ group, version, plural, ...options.addon! }))
      const typed = addon as { status?: { conditions?: Array<Conditions.Condition> } }
      const theirs: Conditions.Condition = { type: "Available", status: "True", reason: "ProbeAvailable", message: "set by the registration agent", lastTransitionTime: "2026-01-01T00:00:00Z" }
      yield* call(() =>
        api.hubCustom().replaceNamespacedCustomObjectStatus({
          group, version, plural, ...options.addon!,
          body: { ...typed, status: { ...typed.status, conditions: [...(typed.status?.conditions ?? []), theirs] } }
        })
      )
      yield* changeSource(options, `${managed.kubeconfigYaml}\n# shared\n`)
      yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigUpdated", "updated")
      const after = (yield* call(() => api.hubCustom().getNamespacedCustomObject({ group, version, plural, ...options.addon! }))) as typeof typed
      assert.deepStrictEqual(Conditions.findCondition(after.status?.conditions ?? [], "Available"), theirs)
      remember(yield* readTarget(options))
    }))

  it.live("a malformed source never overwrites the good Secret; the condition names the problem; no hot loop", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-malformed")
      yield* start(options)
      const good = yield* targetReady(options)
      remember(good)
      yield* changeSource(options, "apiVersion: v1\nkind: Config\nclusters: [\n")
      const failed = yield* until(condition(options), (c) => c.status === "False", "not False")
      assert.strictEqual(failed.reason, "SourceKubeconfigInvalid")
      assert.include(failed.message, `source secret ${options.clusterName}/external-managed-kubeconfig`)
      yield* Effect.sleep("1500 millis")
      const after = yield* readTarget(options)
      assert.strictEqual(after.metadata?.resourceVersion, good.metadata?.resourceVersion)
      assert.deepStrictEqual(after.data, good.data)
      // The same failure, seen on every resync, is one Warning event.
      const reasons = yield* eventReasons(options)
      assert.strictEqual(reasons.filter((r) => r === "ManagedKubeconfigSyncFailed").length, 1)
      // exec credentials are refused by name, too.
      yield* changeSource(options, managed.kubeconfigYaml.replace(/client-certificate-data:.*\n\s*client-key-data:.*/, "exec:\n      command: aws\n      apiVersion: client.authentication.k8s.io/v1"))
      const refused = yield* until(condition(options), (c) => c.message.includes("exec"), "no exec message")
      assert.strictEqual(refused.status, "False")
    }))

  it.live("an RBAC denial on the managed cluster gives a clear condition and no Secret", () =>
    Effect.gen(function*() {
      // The source credentials: a managed ServiceAccount with no rights at all.
      const weak = yield* Apiserver.serviceAccountToken(managed, "weak", "nobody", 3600)
      const options = yield* setUp("c-rbac", Apiserver.kubeconfigForToken(managed, weak))
      yield* start(options)
      const failed = yield* until(condition(options), (c) => c.status === "False", "not False")
      assert.strictEqual(failed.reason, "TokenRequestForbidden")
      assert.include(failed.message, "serviceaccounts/token")
      assert.notInclude(failed.message, weak)
      const missing = yield* Effect.flip(readTarget(options))
      assert.strictEqual((missing as { code?: number }).code, 404)
    }))

  it.live("deleting the add-on deletes the Secret and it is never re-created", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-addon-gone")
      yield* start(options)
      remember(yield* targetReady(options))
      yield* call(() => api.hubCustom().deleteNamespacedCustomObject({ group, version, plural, namespace: options.addon!.namespace, name: options.addon!.name }))
      yield* until(Effect.flip(readTarget(options)), (e) => e.code === 404, "secret gone")
      // A source change would normally rotate; now it must not bring the Secret back, checked
      // once the provisioner has reconciled after the change.
      const before = yield* reconciles
      yield* changeSource(options, `${managed.kubeconfigYaml}\n# after deletion\n`)
      yield* until(reconciles, (count) => count > before, "a reconcile after the source change")
      const stillGone = yield* Effect.flip(readTarget(options))
      assert.strictEqual((stillGone as { code?: number }).code, 404)
    }))

  it.live("an add-on being deleted (finalizer pending) also removes the Secret", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-addon-deleting")
      const addonRef = { group, version, plural, ...options.addon! }
      const addon = yield* call(() => api.hubCustom().getNamespacedCustomObject(addonRef))
      yield* call(() =>
        api.hubCustom().replaceNamespacedCustomObject({
          ...addonRef,
          body: { ...(addon as object), metadata: { ...(addon as { metadata: object }).metadata, finalizers: ["example.com/hold"] } }
        })
      )
      yield* start(options)
      remember(yield* targetReady(options))
      yield* call(() => api.hubCustom().deleteNamespacedCustomObject(addonRef))
      yield* until(Effect.flip(readTarget(options)), (e) => e.code === 404, "secret gone")
      const deleting = yield* call(() => api.hubCustom().getNamespacedCustomObject(addonRef))
      assert.isDefined((deleting as { metadata?: { deletionTimestamp?: string } }).metadata?.deletionTimestamp)
    }))

  it.live("--cleanup deletes the Secret and exits 0, also when it is already gone", () =>
    Effect.gen(function*() {
      const options = yield* setUp("c-cleanup")
      const scope = yield* Scope.make()
      yield* start(options).pipe(Scope.provide(scope))
      remember(yield* targetReady(options))
      yield* Scope.close(scope, Exit.void)
      const cli = (args: ReadonlyArray<string>) =>
        Effect.callback<{ code: number; output: string }>((resume) => {
          ChildProcess.execFile(process.execPath, [tetherEntry(), ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
            resume(Effect.succeed({ code: error === null ? 0 : (error.code as number), output: stdout + stderr }))
          })
        })
      const args = ["managed-kubeconfig-provisioner", "--cleanup", `--kubeconfig=${hosting.kubeconfigPath}`, `--target-namespace=${options.target.namespace}`, `--target-name=${options.target.name}`]
      const first = yield* cli(args)
      assert.strictEqual(first.code, 0, first.output)
      const gone = yield* Effect.flip(readTarget(options))
      assert.strictEqual((gone as { code?: number }).code, 404)
      const second = yield* cli(args)
      assert.strictEqual(second.code, 0, second.output)
      for (const token of seenTokens) assert.notInclude(first.output + second.output, token)
    }))

  it.live("serves /healthz, /readyz and /metrics, logs JSON lines without tokens, and stops on SIGTERM", () =>
    Effect.gen(function*() {
      const core = (info: Apiserver.ApiserverInfo) => Apiserver.kubeConfig(info).makeApiClient(CoreV1Api)
      for (const [info, ns] of [[hosting, "cli"], [hosting, "agent-cli"], [managed, "agent-cli"], [hub, "cli"]] as const) {
        yield* Apiserver.createNamespace(info, ns)
      }
      yield* call(() => core(managed).createNamespacedServiceAccount({ namespace: "agent-cli", body: { metadata: { name: "cluster-proxy" } } }))
      yield* call(() =>
        core(hosting).createNamespacedSecret({ namespace: "cli", body: { metadata: { name: "external-managed-kubeconfig" }, data: { kubeconfig: b64(managed.kubeconfigYaml) } } })
      )
      yield* call(() =>
        Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
          group,
          version,
          plural,
          namespace: "cli",
          body: { apiVersion: `${group}/${version}`, kind: "ManagedClusterAddOn", metadata: { name: "cluster-proxy" }, spec: {} }
        })
      )
      const port = yield* freePort
      const output: Array<string> = []
      const child = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const proc = ChildProcess.spawn(process.execPath, [
            tetherEntry(),
            "managed-kubeconfig-provisioner",
            "--cluster-name=cli",
            "--target-namespace=agent-cli",
            `--kubeconfig=${hosting.kubeconfigPath}`,
            `--hub-kubeconfig=${hub.kubeconfigPath}`,
            "--token-expiration=1h",
            "--refresh-before=10m",
            `--health-probe-bind-address=127.0.0.1:${port}`
          ])
          proc.stdout.on("data", (chunk: Buffer) => output.push(chunk.toString()))
          proc.stderr.on("data", (chunk: Buffer) => output.push(chunk.toString()))
          return proc
        }),
        (proc) => Effect.sync(() => proc.kill("SIGKILL"))
      )
      const base = `http://127.0.0.1:${port}`
      assert.strictEqual((yield* eventually(get(`${base}/healthz`))).body, "ok")
      yield* until(get(`${base}/readyz`), (r) => r.status === 200, "ready")
      // Ready comes within the first reconcile; the reconcile counter when it has returned.
      const metrics = (yield* until(get(`${base}/metrics`), (r) => r.body.includes("tether_reconcile_total"), "first reconcile counted")).body
      assert.include(metrics, 'cluster_proxy_managed_kubeconfig_refresh_total{result="success"} 1')
      const remaining = /^cluster_proxy_managed_kubeconfig_token_expiration_seconds (\S+)$/m.exec(metrics)
      assert.isDefined(remaining?.[1])
      assert.isTrue(Number(remaining![1]) > 3000 && Number(remaining![1]) <= 3600, `expiration seconds ${remaining![1]}`)
      assert.match(metrics, /^cluster_proxy_managed_kubeconfig_token_expiration_timestamp_seconds \d+/m)
      assert.include(metrics, "tether_reconcile_total")

      const secret = yield* call(() => core(hosting).readNamespacedSecret({ namespace: "agent-cli", name: "cluster-proxy-managed-kubeconfig" }))
      const token = unb64(secret.data?.["token"])
      assert.isAbove(token.length, 100)

      const exited = yield* Effect.callback<number | null>((resume) => {
        child.once("exit", (code) => resume(Effect.succeed(code)))
        child.kill("SIGTERM")
      }).pipe(Effect.timeout("10 seconds"))
      assert.isNotNull(exited)
      const lines = output.join("").split("\n").filter((line) => line.trim() !== "")
      assert.isAbove(lines.length, 0)
      for (const line of lines) {
        assert.doesNotThrow(() => JSON.parse(line), undefined, `not a JSON log line: ${line.slice(0, 80)}`)
        assert.notInclude(line, token)
      }
    }))

  it.live("no token appears in any log line", () =>
    Effect.sync(() => {
      assert.isAbove(seenTokens.size, 3)
      assert.isAbove(logLines.length, 0)
      const all = logLines.join("\n")
      for (const token of seenTokens) assert.notInclude(all, token)
    }))
})
