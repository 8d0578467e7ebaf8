/**
 * `--token-file-path` on real hub, hosting and managed apiservers: the credential controller (the
 * shipped CLI, a real process) writes generated kubeconfigs whose user reads its token through
 * `tokenFile`, and a consumer keeps working across a rotation without a restart.
 *
 * The consumer's pod is simulated as a kubelet would mount it (test/support/kubelet.ts): the
 * Secret's `token` key in a volume that follows the Secret by atomic symlink swaps, and the
 * kubeconfig as a file that never changes after the pod starts (what a `subPath` mount or a
 * kubeconfig copied at start gives). The rotation invalidates the old token for real: the managed
 * ServiceAccount is deleted and re-created (its old tokens are refused), then the source changes
 * and the controller mints for the new one. So a consumer that used the kubeconfig's inline token
 * would fail after the rotation (checked, as the control); kubectl and a long-lived
 * `tether hosted-agent --components=service-proxy` (the per-cluster release of the chart's
 * controller layout) keep working. Restarted without the flag, the controller rewrites the
 * kubeconfig without `tokenFile` around the token in hand (no new token).
 */
import { assert, describe, it } from "@effect/vitest"
import { CoreV1Api, loadYaml } from "@kubernetes/client-node"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Discovery from "../../src/domain/Discovery.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import { syncVolume } from "../support/kubelet.ts"
import { freePort, get, kubectl, selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"
import { useTrio } from "../support/trio.ts"

const unb64 = (s: string | undefined) => Buffer.from(s ?? "", "base64").toString("utf8")

interface Started {
  readonly child: ChildProcess.ChildProcess
  readonly output: { text: string }
}

/** The shipped CLI as a child process, killed when the scope closes. */
const spawnTether = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.acquireRelease(
    Effect.sync((): Started => {
      const child = ChildProcess.spawn(process.execPath, [tetherEntry(), ...args], {
        env: { ...process.env, ...env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      const output = { text: "" }
      child.stdout!.on("data", (chunk: Buffer) => (output.text += chunk.toString()))
      child.stderr!.on("data", (chunk: Buffer) => (output.text += chunk.toString()))
      return { child, output }
    }),
    ({ child }) => Effect.sync(() => void child.kill("SIGKILL"))
  )

describe.skipIf(noApiserver)("tokenFile kubeconfig (real apiservers)", () => {
  const trio = useTrio()

  it.live("a consumer reading the token through tokenFile keeps working across a rotation that invalidates the old token, without a restart", () =>
    Effect.gen(function*() {
      const cluster = "c1"
      const namespace = "addon-c1"
      const secretName = "cluster-proxy-managed-kubeconfig"
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-token-file-"))
      const tokenVolume = Path.join(dir, "pod", "volumes", "managed-token")
      const tokenFile = Path.join(tokenVolume, "token")
      const { readerToken } = yield* HostedInstall.prepare(trio, cluster, namespace)
      const annotate = yield* kubectl(trio.hub.kubeconfigPath, [
        "annotate", "managedclusteraddon", "-n", cluster, "cluster-proxy", `${Discovery.hostingClusterAnnotation}=hosting-1`
      ])
      assert.strictEqual(annotate.code, 0, annotate.stderr)

      const controllerProbe = yield* freePort
      const controller = yield* spawnTether([
        "credential-controller",
        `--kubeconfig=${trio.hosting.kubeconfigPath}`,
        `--hub-kubeconfig=${trio.hub.kubeconfigPath}`,
        "--hosting-cluster-name=hosting-1",
        `--token-file-path=${tokenFile}`,
        "--token-expiration=1h",
        "--refresh-before=10m",
        `--health-probe-bind-address=127.0.0.1:${controllerProbe}`
      ])
      const core = Apiserver.kubeConfig(trio.hosting).makeApiClient(CoreV1Api)
      const readSecret = Effect.promise(() => core.readNamespacedSecret({ namespace, name: secretName }).catch(() => undefined))
      const first = yield* until(readSecret, (s) => s !== undefined, "the generated Secret", { timeout: "90 seconds" }).pipe(
        Effect.tapError(() => Effect.sync(() => console.error(controller.output.text)))
      )
      const firstToken = unb64(first!.data?.["token"])
      const generated = unb64(first!.data?.["kubeconfig"])
      const user = (loadYaml(generated) as { users: Array<{ name: string; user: Record<string, string> }> }).users[0]!
      assert.deepStrictEqual(user, { name: "cluster-proxy", user: { token: firstToken, tokenFile } })

      // The pod: the token key as a volume the kubelet keeps in step; the kubeconfig fixed at start.
      yield* syncVolume(Apiserver.kubeConfig(trio.hosting), namespace, {
        kind: "Secret",
        name: secretName,
        items: [{ key: "token", path: "token" }]
      }, tokenVolume)
      assert.strictEqual(Fs.readFileSync(tokenFile, "utf8"), firstToken)
      const frozen = Path.join(dir, "pod", "kubeconfig")
      Fs.writeFileSync(frozen, generated, { mode: 0o600 })
      // The control: the same kubeconfig without tokenFile, as the inline-token layout writes it.
      const inlineOnly = Path.join(dir, "inline-only-kubeconfig")
      Fs.writeFileSync(inlineOnly, generated.replace(/^\s*tokenFile: .*\n/m, ""), { mode: 0o600 })
      assert.notInclude(Fs.readFileSync(inlineOnly, "utf8"), "tokenFile")

      for (const kubeconfig of [frozen, inlineOnly]) {
        const run = yield* kubectl(kubeconfig, ["get", "--raw", "/api"])
        assert.strictEqual(run.code, 0, `${kubeconfig}: ${run.stderr}`)
      }

      // A long-lived consumer: the service proxy of the per-cluster release, reading the kubeconfig.
      const tls = selfSigned(dir, "proxy", ["127.0.0.1"])
      const [proxyPort, proxyProbe] = [yield* freePort, yield* freePort]
      const consumer = yield* spawnTether([
        "hosted-agent",
        "--components=service-proxy",
        `--kubeconfig=${trio.hosting.kubeconfigPath}`,
        `--managed-kubeconfig=${frozen}`,
        `--service-proxy-listen=127.0.0.1:${proxyPort}`,
        `--cert=${tls.certFile}`,
        `--key=${tls.keyFile}`,
        "--token-review-cache-ttl=0",
        `--health-probe-bind-address=127.0.0.1:${proxyProbe}`
      ], { POD_NAMESPACE: namespace })
      yield* until(get(`http://127.0.0.1:${proxyProbe}/readyz`), (r) => r.status === 200, "the service proxy ready", { timeout: "60 seconds" }).pipe(
        Effect.tapError(() => Effect.sync(() => console.error(consumer.output.text)))
      )
      const kas = {
        "cluster-proxy-proto": "https",
        "cluster-proxy-namespace": "default",
        "cluster-proxy-service": "kubernetes",
        "cluster-proxy-port": "443",
        authorization: `Bearer ${readerToken}`
      }
      const listPods = send(proxyPort, { path: "/api/v1/namespaces/default/pods", headers: kas, ca: [tls.cert] })
      const before = yield* listPods
      assert.strictEqual(before.status, 200, before.body)

      // The ServiceAccount is re-created: every token of the old one is refused from now on.
      const managedCore = Apiserver.kubeConfig(trio.managed).makeApiClient(CoreV1Api)
      yield* Effect.promise(() => managedCore.deleteNamespacedServiceAccount({ namespace, name: "cluster-proxy" }))
      yield* until(
        Effect.promise(() => managedCore.readNamespacedServiceAccount({ namespace, name: "cluster-proxy" }).then(() => true, () => false)),
        (present) => !present,
        "the ServiceAccount gone"
      )
      yield* Effect.promise(() => managedCore.createNamespacedServiceAccount({ namespace, body: { metadata: { name: "cluster-proxy" } } }))
      const refused = yield* until(kubectl(inlineOnly, ["get", "--raw", "/api"]), (run) => run.code !== 0, "the old token refused")
      assert.match(refused.stderr, /Unauthorized|401/)
      const failing = yield* until(listPods, (reply) => reply.status !== 200, "the service proxy failing with the old token")
      assert.notStrictEqual(failing.status, 200)

      // The source changes: the controller mints for the new ServiceAccount and rewrites the Secret.
      const source = yield* Effect.promise(() => core.readNamespacedSecret({ namespace: cluster, name: "external-managed-kubeconfig" }))
      yield* Effect.promise(() =>
        core.replaceNamespacedSecret({
          namespace: cluster,
          name: "external-managed-kubeconfig",
          body: { ...source, data: { kubeconfig: Buffer.from(`${trio.managed.kubeconfigYaml}\n# rotated\n`).toString("base64") } }
        })
      )
      const rotated = yield* until(readSecret, (s) => unb64(s?.data?.["token"]) !== firstToken, "a new token in the Secret", { timeout: "60 seconds" })
      const secondToken = unb64(rotated!.data?.["token"])
      yield* until(Effect.sync(() => Fs.readFileSync(tokenFile, "utf8")), (token) => token === secondToken, "the kubelet's swap of the token file")

      // The kubeconfig file did not change, yet its consumers use the new token; the inline one fails.
      assert.strictEqual(Fs.readFileSync(frozen, "utf8"), generated)
      const after = yield* kubectl(frozen, ["get", "--raw", "/api"])
      assert.strictEqual(after.code, 0, after.stderr)
      const control = yield* kubectl(inlineOnly, ["get", "--raw", "/api"])
      assert.notStrictEqual(control.code, 0, "the inline token of the old ServiceAccount must be refused")
      const served = yield* until(listPods, (reply) => reply.status === 200, "the service proxy serving with the new token", { timeout: "30 seconds" })
      assert.strictEqual(served.status, 200, served.body)
      assert.isNull(consumer.child.exitCode, "the consumer was not restarted")
      assert.isNull(consumer.child.signalCode)

      // Turned off: a restarted controller puts the token in hand back into an inline-only
      // kubeconfig at once, without a TokenRequest (the token and its lifetime stay).
      controller.child.kill("SIGTERM")
      yield* until(Effect.sync(() => controller.child.exitCode !== null || controller.child.signalCode !== null), (exited) => exited, "the controller stopped")
      const plain = yield* spawnTether([
        "credential-controller",
        `--kubeconfig=${trio.hosting.kubeconfigPath}`,
        `--hub-kubeconfig=${trio.hub.kubeconfigPath}`,
        "--hosting-cluster-name=hosting-1",
        "--token-expiration=1h",
        "--refresh-before=10m",
        `--health-probe-bind-address=127.0.0.1:${yield* freePort}`
      ])
      const relaid = yield* until(readSecret, (s) => !unb64(s?.data?.["kubeconfig"]).includes("tokenFile"), "the kubeconfig without tokenFile", { timeout: "60 seconds" })
      assert.strictEqual(unb64(relaid!.data?.["token"]), secondToken)
      assert.strictEqual(unb64(relaid!.data?.["kubeconfig"]), generated.replace(firstToken, secondToken).replace(/^\s*tokenFile: .*\n/m, ""))
      assert.deepStrictEqual(relaid!.metadata?.annotations, rotated!.metadata?.annotations)

      for (const token of [firstToken, secondToken]) {
        assert.notInclude(controller.output.text, token)
        assert.notInclude(plain.output.text, token)
        assert.notInclude(consumer.output.text, token)
      }
    }).pipe(Effect.scoped), 240_000)
})
