/**
 * The image `npm run image` builds (`.ci/image/build`), loaded into podman and run by a real OCI
 * runtime the way a hardened pod runs it: host network, read-only root file system, every
 * capability dropped, no new privileges, the image's own user. It checks the image's
 * configuration, that it has no shell, that `tether --help` lists the subcommands (through the
 * entry point and through `tether` on the PATH, the chart's command), and that its
 * `hosted-agent`, with all four components, turns Ready against a real kube-apiserver on loopback
 * (one apiserver plays hosting and managed cluster).
 *
 * The archive is `$TETHER_IMAGE_ARCHIVE`, else `.cache/image/tether-<version>.oci.tar`. The suite
 * skips when the archive, podman or the apiserver is missing, unless `TETHER_REQUIRE_IMAGE=1`
 * (set by `.ci/run`, after it built the image): then a missing piece fails it.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { AuthenticationV1Api, CoreV1Api } from "@kubernetes/client-node"
import { Data, Effect, Exit, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { Apiserver, EnvtestAssets } from "../../src/testing/index.ts"
import { NotYet, until } from "../support/eventually.ts"
import { freePort, selfSigned } from "../support/local.ts"
import * as Podman from "./Podman.ts"

const packageJson = JSON.parse(Fs.readFileSync(Path.resolve("package.json"), "utf8")) as { version: string }
const archive = process.env["TETHER_IMAGE_ARCHIVE"] ?? Path.resolve(".cache/image", `tether-${packageJson.version}.oci.tar`)
const required = process.env["TETHER_REQUIRE_IMAGE"] === "1"
const missing = [
  ...(Fs.existsSync(archive) ? [] : [`no image archive at ${archive} (npm run image builds it)`]),
  ...Podman.missing(),
  ...(EnvtestAssets.resolveSync() === undefined ? ["no kube-apiserver assets (npm run envtest)"] : [])
]
if (missing.length > 0 && !required) console.warn(`[Image.test] skipping the image suite: ${missing.join("; ")}`)

const subcommands = ["hosted-agent", "managed-kubeconfig-provisioner", "managed-apiserver-proxy", "service-relay", "service-proxy", "addon-agent", "credential-controller"]
const imageName = `docker.io/library/tether:${packageJson.version}`

class CallFailed extends Data.TaggedError("CallFailed")<{ readonly message: string }> {}
const call = <A>(what: string, f: () => Promise<A>): Effect.Effect<A, CallFailed> =>
  Effect.tryPromise({ try: f, catch: (e) => new CallFailed({ message: `${what}: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}` }) })

const get = (url: string) =>
  Effect.tryPromise({
    try: async () => {
      const response = await fetch(url, { signal: AbortSignal.timeout(5_000) })
      return { status: response.status, body: await response.text() }
    },
    catch: () => new NotYet({ what: `GET ${url}` })
  })

/** Fields of /proc/<pid>/status, such as Uid or CapEff. */
const procStatus = (pid: number): Record<string, string> =>
  Object.fromEntries(
    Fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").filter((l) => l.includes(":")).map((l) => {
      const i = l.indexOf(":")
      return [l.slice(0, i), l.slice(i + 1).trim()]
    })
  )

const gitHas = (commit: string): boolean =>
  ChildProcess.spawnSync("git", ["cat-file", "-e", `${commit}^{commit}`], { stdio: "ignore" }).status === 0

describe.skipIf(missing.length > 0 && !required)("the container image (podman, real OCI runtime)", () => {
  let scope: Scope.Closeable | undefined
  let podman!: Podman.Podman
  let apiserver!: Apiserver.ApiserverInfo

  beforeAll(async () => {
    if (missing.length > 0) throw new Error(`TETHER_REQUIRE_IMAGE=1 but: ${missing.join("; ")}`)
    scope = await Effect.runPromise(Scope.make("sequential"))
    const [p, a] = await Effect.runPromise(
      Effect.all([
        Effect.gen(function*() {
          const p = yield* Podman.make
          const loaded = yield* p.ok(["load", "--input", archive], { timeoutMs: 120_000 })
          if (!loaded.includes(imageName)) {
            return yield* new Podman.PodmanError({ message: `podman load did not name the image ${imageName}: ${loaded.trim()}` })
          }
          return p
        }),
        Apiserver.make({ name: "image" })
      ], { concurrency: "unbounded" }).pipe(Scope.provide(scope))
    )
    podman = p
    apiserver = a
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.live("is configured as a non-root image whose entry point is tether, labelled with its version and commit", () =>
    Effect.gen(function*() {
      const [inspected] = JSON.parse(yield* podman.ok(["image", "inspect", imageName])) as Array<{
        Config: { User?: string; Entrypoint?: Array<string>; Env?: Array<string>; Labels?: Record<string, string> }
        Architecture: string
        Os: string
      }>
      assert.isDefined(inspected)
      const config = inspected!.Config
      assert.strictEqual(config.User, "65532:65532")
      assert.deepStrictEqual(config.Entrypoint, ["/nodejs/bin/node", "/app/dist/tether.mjs"])
      assert.strictEqual(`${inspected!.Os}/${inspected!.Architecture}`, "linux/amd64")
      const labels = config.Labels ?? {}
      assert.strictEqual(labels["org.opencontainers.image.version"], packageJson.version)
      const revision = labels["org.opencontainers.image.revision"] ?? ""
      assert.match(revision, /^[0-9a-f]{40}(-dirty)?$/)
      assert.isTrue(gitHas(revision.replace(/-dirty$/, "")), `revision ${revision} is not a commit of this repository`)
    }))

  it.live("has no shell, and lists the subcommands through its entry point and through `tether` on the PATH", () =>
    Effect.gen(function*() {
      const help = yield* podman.exec(["run", "--rm", ...podman.hardened, imageName, "--help"])
      assert.strictEqual(help.code, 0, help.stderr)
      for (const name of subcommands) assert.include(help.stdout, name)

      // The chart starts containers with `command: ["tether", <subcommand>, ...]`.
      const version = yield* podman.exec(["run", "--rm", ...podman.hardened, "--entrypoint=tether", imageName, "--version"])
      assert.strictEqual(version.code, 0, version.stderr)
      assert.include(version.stdout, `v${packageJson.version}`)

      for (const shell of ["/bin/sh", "/bin/bash", "/usr/bin/env"]) {
        const attempt = yield* podman.exec(["run", "--rm", ...podman.hardened, `--entrypoint=${shell}`, imageName, "-c", "true"])
        assert.notStrictEqual(attempt.code, 0, `${shell} ran in the image`)
        assert.match(attempt.stderr, /no such file|not found/i, `${shell}: ${attempt.stderr}`)
      }
    }))

  it.live("runs hosted-agent (all four components) to Ready against a real apiserver, as uid 65532 with no capabilities on a read-only root", () =>
    Effect.gen(function*() {
      const core = Apiserver.kubeConfig(apiserver).makeApiClient(CoreV1Api)
      const authn = Apiserver.kubeConfig(apiserver).makeApiClient(AuthenticationV1Api)
      // One apiserver plays both clusters: the source Secret holds its own admin kubeconfig.
      yield* Apiserver.createNamespace(apiserver, "image")
      yield* Apiserver.createNamespace(apiserver, "agent-image")
      yield* call("creating the ServiceAccount", () =>
        core.createNamespacedServiceAccount({ namespace: "agent-image", body: { metadata: { name: "cluster-proxy" } } }))
      yield* call("creating the source Secret", () =>
        core.createNamespacedSecret({
          namespace: "image",
          body: {
            metadata: { name: "external-managed-kubeconfig" },
            data: { kubeconfig: Buffer.from(apiserver.kubeconfigYaml).toString("base64") }
          }
        }))

      // The hosting kubeconfig and the service proxy's serving pair, readable by the container's
      // user only, mounted read-only.
      const mountDir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-image-kubeconfig-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const kubeconfigFile = Path.join(mountDir, "kubeconfig")
      Fs.writeFileSync(kubeconfigFile, apiserver.kubeconfigYaml, { mode: 0o600 })
      selfSigned(mountDir, "serving", ["127.0.0.1"])
      for (const file of [kubeconfigFile, Path.join(mountDir, "serving.crt"), Path.join(mountDir, "serving.key")]) {
        Fs.chmodSync(file, 0o600)
        Fs.chownSync(file, 65532, 65532)
      }
      Fs.chmodSync(mountDir, 0o755)

      const [port, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
      const name = `tether-hosted-agent-${process.pid}`
      yield* Effect.acquireRelease(
        podman.ok([
          "run",
          "--detach",
          `--name=${name}`,
          ...podman.hardened,
          `--volume=${mountDir}:/etc/tether:ro`,
          imageName,
          "hosted-agent",
          "--cluster-name=image",
          "--target-namespace=agent-image",
          "--lease-namespace=agent-image",
          "--kubeconfig=/etc/tether/kubeconfig",
          "--token-expiration=1h",
          "--refresh-before=10m",
          `--health-probe-bind-address=127.0.0.1:${port}`,
          `--apiserver-proxy-listen=127.0.0.1:${relayPort}`,
          `--service-proxy-listen=127.0.0.1:${proxyPort}`,
          "--cert=/etc/tether/serving.crt",
          "--key=/etc/tether/serving.key",
          "--enable-proxy-agent-health-check=false"
        ]),
        () => podman.exec(["rm", "--force", "--time=0", name]).pipe(Effect.asVoid)
      )
      const base = `http://127.0.0.1:${port}`
      const logs = () => podman.exec(["logs", name]).pipe(Effect.map((o) => o.stdout + o.stderr))
      const ready = yield* until(get(`${base}/readyz`), (r) => r.status === 200, "readyz 200", { timeout: "60 seconds", interval: "250 millis" }).pipe(
        Effect.catchTag("NotYet", (e) => logs().pipe(Effect.flatMap((l) => Effect.fail(new NotYet({ what: `${e.what}; container log:\n${l.slice(-4000)}` })))))
      )
      assert.strictEqual(ready.status, 200)
      const checks = (yield* get(`${base}/readyz?verbose`)).body
      for (const component of ["provisioner", "apiserver-proxy", "service-proxy", "addon-lease"]) {
        assert.include(checks, `${component}/`, `/readyz?verbose lists ${component}'s checks`)
      }
      const metrics = (yield* get(`${base}/metrics`)).body
      assert.include(metrics, 'cluster_proxy_managed_kubeconfig_refresh_total{result="success"} 1')

      // The container's process as the kernel sees it.
      const pid = Number((yield* podman.ok(["inspect", "--format={{.State.Pid}}", name])).trim())
      assert.isAbove(pid, 0)
      const status = procStatus(pid)
      assert.deepStrictEqual(status["Uid"]?.split(/\s+/), ["65532", "65532", "65532", "65532"])
      assert.deepStrictEqual(status["Gid"]?.split(/\s+/), ["65532", "65532", "65532", "65532"])
      for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) assert.strictEqual(status[set], "0000000000000000", set)
      assert.strictEqual(status["NoNewPrivs"], "1")
      const rootMount = Fs.readFileSync(`/proc/${pid}/mountinfo`, "utf8").split("\n").find((l) => l.split(" ")[4] === "/")
      assert.isDefined(rootMount)
      assert.include(rootMount!.split(" ")[5]!.split(","), "ro", `root mount: ${rootMount}`)
      const netns = (p: number | "self") => Fs.readlinkSync(`/proc/${p}/ns/net`)
      assert.strictEqual(netns(pid), netns("self"), "host network")

      // What it wrote works: the token authenticates as the managed ServiceAccount.
      const secret = yield* call("reading the generated Secret", () =>
        core.readNamespacedSecret({ namespace: "agent-image", name: "cluster-proxy-managed-kubeconfig" }))
      const token = Buffer.from(secret.data?.["token"] ?? "", "base64").toString("utf8")
      const review = yield* call("TokenReview", () => authn.createTokenReview({ body: { spec: { token } } }))
      assert.isTrue(review.status?.authenticated)
      assert.strictEqual(review.status?.user?.username, "system:serviceaccount:agent-image:cluster-proxy")

      // SIGTERM stops it cleanly; its log is JSON lines without the token.
      yield* podman.ok(["stop", "--time=10", name], { timeoutMs: 30_000 })
      const exitCode = (yield* podman.ok(["inspect", "--format={{.State.ExitCode}}", name])).trim()
      assert.strictEqual(exitCode, "0")
      const lines = (yield* logs()).split("\n").filter((l) => l.trim() !== "")
      assert.isAbove(lines.length, 0)
      for (const line of lines) {
        assert.doesNotThrow(() => JSON.parse(line), undefined, `not a JSON log line: ${line.slice(0, 120)}`)
        assert.notInclude(line, token)
      }
    }))
})
