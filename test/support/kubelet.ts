/**
 * What a kubelet does for the chart's pods, done on this machine against a real apiserver, for
 * tests that run a deployed chart without a container runtime:
 *
 * - **Secret and ConfigMap volumes** are files kept in sync with the real object the way a kubelet
 *   keeps them ({@link syncVolume}): each version is written to a fresh `..<timestamp>` folder,
 *   `..data` is swapped to it atomically (a `..data_tmp` symlink renamed over it), every key is a
 *   symlink `<key> -> ..data/<key>`, and the previous version's folder is removed. Readers that
 *   watch the folder see one consistent version at a time, as in a pod.
 * - **Pods** ({@link makeNode}): a node runs one pod per Deployment the apiserver holds (the
 *   Deployment as applied, not as rendered), replaces it when the pod template changes and stops it
 *   (SIGTERM, SIGKILL after `terminationGracePeriodSeconds`) when the Deployment goes; a Job's pod
 *   runs to completion on request, retried as `restartPolicy`/`backoffLimit` say. Each container
 *   runs its command, arguments and environment as a process: `tether` is package.json's bin
 *   (src/testing/TetherEntry.ts, which builds a missing or stale bundle first);
 *   each volume mount path is mapped to the pod's folder (in arguments and in `TMPDIR` for a
 *   `/tmp` mount); the downward-API namespace and name are filled in.
 * - **The pod's identity**: a TokenRequest for the pod's ServiceAccount, written as a kubeconfig
 *   and passed as `--kubeconfig` to the subcommands that have that flag (their default is the
 *   in-cluster configuration, whose token path is fixed and cannot be mapped without a mount
 *   namespace).
 * - **The pod's network**: either a network namespace (the pod gets the namespace's address, ports
 *   stay as declared, and the node records the Pod with that IP in `status.podIPs` and the
 *   Endpoints of every Service selecting it, so `services/proxy` reaches it), or loopback, where
 *   each declared container port is mapped to a free port of 127.0.0.1 (in listen arguments of
 *   the form `:<port>`), because several pods share this machine's network.
 */
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Container,
  type V1PodSpec,
  type V1PodTemplateSpec,
  Watch
} from "@kubernetes/client-node"
import { Data, Duration, Effect, Exit, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { Apiserver } from "../../src/testing/index.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { until } from "./eventually.ts"
import { freePort, get } from "./local.ts"
import { inNetns, type Netns } from "./netns.ts"
import { atomicWrite, type Payload } from "./volume.ts"

const withKubeconfigFlag = new Map<string, boolean>()

/**
 * Whether `tether <subcommand>` reads a cluster's credentials through `--kubeconfig` (its default
 * being the in-cluster configuration), as its own `--help` says; asked once per subcommand.
 */
const readsInClusterConfig = (subcommand: string): boolean => {
  let known = withKubeconfigFlag.get(subcommand)
  if (known === undefined) {
    const help = ChildProcess.execFileSync(process.execPath, [tetherEntry(), subcommand, "--help"], { encoding: "utf8", timeout: 60_000 })
    known = /--kubeconfig\b/.test(help)
    withKubeconfigFlag.set(subcommand, known)
  }
  return known
}

export class KubeletError extends Data.TaggedError("KubeletError")<{ readonly message: string }> {}

const fail = (message: string) => Effect.fail(new KubeletError({ message }))

// ---------------------------------------------------------------------------------------------
// volumes
// ---------------------------------------------------------------------------------------------

const samePayload = (a: Payload | undefined, b: Payload) =>
  a !== undefined && a.size === b.size && [...b].every(([key, value]) => a.get(key)?.equals(value) === true)

export interface VolumeSource {
  readonly kind: "Secret" | "ConfigMap"
  readonly name: string
  readonly items?: ReadonlyArray<{ readonly key: string; readonly path: string }> | undefined
  readonly defaultMode?: number | undefined
  readonly optional?: boolean | undefined
}

interface DataObject {
  readonly metadata?: { readonly name?: string }
  readonly data?: Record<string, string>
  readonly binaryData?: Record<string, string>
}

const payloadOf = (source: VolumeSource, object: DataObject | undefined): Payload => {
  const all = new Map<string, Buffer>()
  for (const [key, value] of Object.entries(object?.data ?? {})) {
    all.set(key, source.kind === "Secret" ? Buffer.from(value, "base64") : Buffer.from(value))
  }
  for (const [key, value] of Object.entries(object?.binaryData ?? {})) all.set(key, Buffer.from(value, "base64"))
  if (source.items === undefined) return all
  const picked = new Map<string, Buffer>()
  for (const item of source.items) {
    const value = all.get(item.key)
    if (value !== undefined) picked.set(item.path, value)
  }
  return picked
}

/**
 * Keep `dir` in sync with a Secret or ConfigMap of `namespace` on `cluster`, by a watch on it
 * (reconnected when it ends), until the scope closes. Like a kubelet, the first version must
 * exist before the pod starts (unless the volume is optional: then it starts empty), and a
 * deleted object leaves the last files in place.
 */
export const syncVolume = (kubeConfig: KubeConfig, namespace: string, source: VolumeSource, dir: string) =>
  Effect.gen(function*() {
    const mode = source.defaultMode ?? 0o644
    let written: Payload | undefined
    const write = (object: DataObject | undefined) => {
      const payload = payloadOf(source, object)
      if (samePayload(written, payload)) return
      atomicWrite(dir, payload, mode)
      written = payload
    }
    const core = kubeConfig.makeApiClient(CoreV1Api)
    const read = Effect.tryPromise({
      try: (): Promise<DataObject> =>
        source.kind === "Secret"
          ? core.readNamespacedSecret({ namespace, name: source.name })
          : core.readNamespacedConfigMap({ namespace, name: source.name }),
      catch: (error) => new KubeletError({ message: `${source.kind} ${namespace}/${source.name}: ${(error as { code?: number }).code ?? String(error)}` })
    })
    const first = yield* (source.optional === true ? Effect.orElseSucceed(read, () => undefined) : until(read, () => true, `${source.kind} ${namespace}/${source.name} to mount`, { timeout: "60 seconds", interval: "250 millis" }).pipe(
          Effect.mapError((error) => new KubeletError({ message: error.message }))
        ))
    write(first)

    const plural = source.kind === "Secret" ? "secrets" : "configmaps"
    let stopped = false
    let abort: AbortController | undefined
    const watch = () => {
      if (stopped) return
      new Watch(kubeConfig).watch(
        `/api/v1/namespaces/${namespace}/${plural}`,
        { fieldSelector: `metadata.name=${source.name}` },
        (phase, object: DataObject) => {
          if (phase === "ADDED" || phase === "MODIFIED") write(object)
        },
        () => void setTimeout(watch, 250)
      ).then((controller) => {
        abort = controller
        if (stopped) controller.abort()
      }, () => void setTimeout(watch, 250))
    }
    yield* Effect.acquireRelease(Effect.sync(watch), () =>
      Effect.sync(() => {
        stopped = true
        abort?.abort()
      }))
  })

// ---------------------------------------------------------------------------------------------
// pods
// ---------------------------------------------------------------------------------------------

export type Network =
  | { readonly _tag: "Loopback" }
  | { readonly _tag: "Netns"; readonly netns: Netns }

export interface NodeOptions {
  readonly cluster: Apiserver.ApiserverInfo
  /** The namespace whose Deployments and Jobs this node runs. */
  readonly namespace: string
  /** Pod folders go below it. */
  readonly dir: string
  readonly network: Network
}

export interface Container {
  readonly name: string
  readonly child: ChildProcess.ChildProcess
  /** What ran: the program and its arguments after mapping. */
  readonly argv: ReadonlyArray<string>
  readonly output: { text: string }
}

export interface Pod {
  readonly name: string
  /** `Deployment/<name>` or `Job/<name>`. */
  readonly owner: string
  readonly address: string
  readonly containers: ReadonlyArray<Container>
  readonly container: (name: string) => Container
  /** Where the test reaches a declared container port. */
  readonly port: (containerPort: number) => number
  readonly url: (containerPort: number, path: string) => string
  /** Every container's readiness probe answers 200 (bounded); fails with the output when one exits. */
  readonly ready: Effect.Effect<void, KubeletError>
  /** Every container has exited. */
  readonly exited: boolean
}

export interface Node {
  /** Run what the apiserver's Deployments say: start, replace or stop pods. */
  readonly sync: Effect.Effect<void, KubeletError>
  /** The running pod of Deployment `name`. */
  readonly pod: (deployment: string) => Effect.Effect<Pod, KubeletError>
  /** Run Job `name`'s pod to completion (retried per its spec); the last container's exit code and the output. */
  readonly runJob: (job: string) => Effect.Effect<{ readonly code: number | null; readonly output: string; readonly attempts: number }, KubeletError>
  /** Every process this node has started, for checking that none is left. */
  readonly processes: () => ReadonlyArray<ChildProcess.ChildProcess>
}

// A killed test worker must not leave pods behind.
const everyChild = new Set<ChildProcess.ChildProcess>()
process.once("exit", () => {
  for (const child of everyChild) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
})

const exitedOf = (child: ChildProcess.ChildProcess) => child.exitCode !== null || child.signalCode !== null

const stopProcess = (child: ChildProcess.ChildProcess, grace: Duration.Duration) =>
  Effect.callback<void>((resume) => {
    if (exitedOf(child)) return resume(Effect.void)
    const kill = setTimeout(() => child.kill("SIGKILL"), Duration.toMillis(grace))
    child.once("exit", () => {
      clearTimeout(kill)
      resume(Effect.void)
    })
    child.kill("SIGTERM")
  })

const tail = (text: string) => text.trimEnd().split("\n").slice(-30).join("\n")

/** Why a container is no longer running, with the end of its output; undefined while it runs. */
export const exitReport = (container: Container): string | undefined =>
  exitedOf(container.child)
    ? `${container.name} exited (${container.child.exitCode ?? container.child.signalCode}):\n${tail(container.output.text)}`
    : undefined

/** A listen argument's port (`--x=:8000`, `--x=0.0.0.0:8000`, `--x=[::]:8000`), if it is one. */
const listenArg = /^(--[a-z0-9-]+=)(?::|0\.0\.0\.0:|\[::\]:)(\d+)$/

export const makeNode = (options: NodeOptions): Effect.Effect<Node, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { cluster, namespace, network } = options
    const kubeConfig = Apiserver.kubeConfig(cluster)
    const core = kubeConfig.makeApiClient(CoreV1Api)
    const apps = kubeConfig.makeApiClient(AppsV1Api)
    const batch = kubeConfig.makeApiClient(BatchV1Api)
    const nodeScope = yield* Effect.scope
    const started: Array<ChildProcess.ChildProcess> = []
    const running = new Map<string, { readonly pod: Pod; readonly hash: string; readonly scope: Scope.Closeable }>()
    let podCounter = 0

    const call = <A>(what: string, f: () => Promise<A>) =>
      Effect.tryPromise({ try: f, catch: (error) => new KubeletError({ message: `${cluster.name}: ${what}: ${String((error as { body?: unknown }).body ?? error)}` }) })

    /** Register the Pod with its IP and the Endpoints of the Services that select it (netns pods only). */
    const register = (podName: string, template: V1PodTemplateSpec, ip: string) =>
      Effect.gen(function*() {
        const labels = template.metadata?.labels ?? {}
        yield* call(`create Pod ${podName}`, () => core.createNamespacedPod({ namespace, body: { metadata: { name: podName, labels }, spec: template.spec! } }))
        yield* call(`Pod ${podName} status`, () =>
          core.patchNamespacedPodStatus(
            { namespace, name: podName, body: { status: { phase: "Running", podIP: ip, podIPs: [{ ip }] } } },
            setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
          ))
        const services = yield* call("list Services", () => core.listNamespacedService({ namespace }))
        const ports = (template.spec?.containers ?? []).flatMap((c) => c.ports ?? [])
        for (const service of services.items) {
          const selector = service.spec?.selector
          if (selector === undefined || !Object.entries(selector).every(([key, value]) => labels[key] === value)) continue
          const name = service.metadata!.name!
          const body = {
            metadata: { name },
            subsets: [{
              addresses: [{ ip, targetRef: { kind: "Pod", name: podName, namespace } }],
              ports: (service.spec?.ports ?? []).map((p) => ({
                ...(p.name === undefined ? {} : { name: p.name }),
                protocol: p.protocol ?? "TCP",
                port: typeof p.targetPort === "number"
                  ? p.targetPort
                  : ports.find((cp) => cp.name === p.targetPort)?.containerPort ?? p.port
              }))
            }]
          }
          yield* call(`Endpoints ${name}`, () =>
            core.replaceNamespacedEndpoints({ namespace, name, body }).catch(() => core.createNamespacedEndpoints({ namespace, body })))
        }
        return services.items.filter((s) => {
          const selector = s.spec?.selector
          return selector !== undefined && Object.entries(selector).every(([key, value]) => labels[key] === value)
        }).map((s) => s.metadata!.name!)
      })

    const unregister = (podName: string, endpoints: ReadonlyArray<string>) =>
      Effect.promise(async () => {
        for (const name of endpoints) await core.deleteNamespacedEndpoints({ namespace, name }).catch(() => undefined)
        await core.deleteNamespacedPod({ namespace, name: podName, gracePeriodSeconds: 0 }).catch(() => undefined)
      })

    /** The pod's identity: a kubeconfig with a token of its ServiceAccount. */
    const identity = (spec: V1PodSpec, podDir: string) =>
      Effect.gen(function*() {
        const serviceAccount = spec.serviceAccountName ?? "default"
        const answer = yield* call(`TokenRequest for ServiceAccount ${namespace}/${serviceAccount}`, () =>
          core.createNamespacedServiceAccountToken({
            namespace,
            name: serviceAccount,
            body: { spec: { audiences: [Apiserver.serviceAccountIssuer], expirationSeconds: 3600 } }
          }))
        const file = Path.join(podDir, "serviceaccount-kubeconfig")
        Fs.writeFileSync(file, Apiserver.kubeconfigForToken(cluster, answer.status?.token ?? "", { namespace }), { mode: 0o600 })
        return file
      })

    /** Mount the pod's volumes; mount path -> local folder, per container. */
    const mountVolumes = (spec: V1PodSpec, podDir: string) =>
      Effect.gen(function*() {
        const folders = new Map<string, string>()
        for (const volume of spec.volumes ?? []) {
          const folder = Path.join(podDir, "volumes", volume.name)
          Fs.mkdirSync(folder, { recursive: true })
          folders.set(volume.name, folder)
          if (volume.secret !== undefined) {
            yield* syncVolume(kubeConfig, namespace, {
              kind: "Secret",
              name: volume.secret.secretName!,
              items: volume.secret.items,
              defaultMode: volume.secret.defaultMode,
              optional: volume.secret.optional
            }, folder)
          } else if (volume.configMap !== undefined) {
            yield* syncVolume(kubeConfig, namespace, {
              kind: "ConfigMap",
              name: volume.configMap.name!,
              items: volume.configMap.items,
              defaultMode: volume.configMap.defaultMode,
              optional: volume.configMap.optional
            }, folder)
          } else if (volume.emptyDir === undefined) {
            return yield* fail(`volume ${volume.name}: only Secret, ConfigMap and emptyDir volumes are supported`)
          }
        }
        return folders
      })

    const startContainer = (
      podName: string,
      podDir: string,
      container: V1Container,
      folders: ReadonlyMap<string, string>,
      kubeconfig: string,
      portMap: ReadonlyMap<number, number>
    ) =>
      Effect.gen(function*() {
        const mounts = (container.volumeMounts ?? []).map((m) => ({
          path: m.mountPath,
          folder: Path.join(folders.get(m.name) ?? "", m.subPath ?? "")
        }))
        const mapPath = (value: string) => {
          for (const { folder, path } of mounts) {
            if (value === path || value.startsWith(`${path}/`)) return folder + value.slice(path.length)
          }
          return value
        }
        const mapArg = (arg: string) => {
          const listen = listenArg.exec(arg)
          if (listen !== null && portMap.has(Number(listen[2]))) return `${listen[1]}127.0.0.1:${portMap.get(Number(listen[2]))}`
          const eq = arg.indexOf("=")
          return eq > 0 && arg.startsWith("--") ? arg.slice(0, eq + 1) + mapPath(arg.slice(eq + 1)) : mapPath(arg)
        }
        const [program, ...commandArgs] = container.command ?? []
        if (program !== "tether") return yield* fail(`container ${container.name}: command ${String(program)} is not tether`)
        const args = [...commandArgs, ...(container.args ?? [])].map(mapArg)
        const subcommand = args.find((arg) => !arg.startsWith("-")) ?? ""
        if (readsInClusterConfig(subcommand) && !args.some((arg) => arg.startsWith("--kubeconfig="))) args.push(`--kubeconfig=${kubeconfig}`)

        const env: Record<string, string> = { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: podDir }
        const tmp = mounts.find((m) => m.path === "/tmp")
        if (tmp !== undefined) env["TMPDIR"] = tmp.folder
        for (const variable of container.env ?? []) {
          const field = variable.valueFrom?.fieldRef?.fieldPath
          if (variable.value !== undefined) env[variable.name] = variable.value
          else if (field === "metadata.namespace") env[variable.name] = namespace
          else if (field === "metadata.name") env[variable.name] = podName
          else return yield* fail(`container ${container.name}: env ${variable.name} has an unsupported source`)
        }

        const tether = [process.execPath, tetherEntry(), ...args]
        const [file, argv] = network._tag === "Netns" ? inNetns(network.netns, tether) : [tether[0]!, tether.slice(1)]
        const output = { text: "" }
        const log = Fs.openSync(Path.join(podDir, `${container.name}.log`), "a")
        const child = ChildProcess.spawn(file, [...argv], { env, cwd: podDir, stdio: ["ignore", "pipe", "pipe"] })
        child.on("error", (error) => void (output.text += `spawn failed: ${error.message}\n`))
        const onData = (chunk: Buffer) => {
          output.text += chunk.toString()
          Fs.writeSync(log, chunk)
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
        child.once("exit", () => Fs.closeSync(log))
        started.push(child)
        everyChild.add(child)
        return { name: container.name, child, argv: [file, ...argv], output } satisfies Container
      })

    const startPod = (owner: string, template: V1PodTemplateSpec) =>
      Effect.gen(function*() {
        const spec = template.spec
        if (spec === undefined) return yield* fail(`${owner}: no pod spec`)
        const podName = `${owner.split("/")[1]}-${++podCounter}`
        const podDir = Path.join(options.dir, podName)
        Fs.mkdirSync(podDir, { recursive: true })
        const scope = yield* Scope.fork(nodeScope, "sequential")
        const build = Effect.gen(function*() {
          const address = network._tag === "Netns" ? network.netns.nsAddress : "127.0.0.1"
          const portMap = new Map<number, number>()
          if (network._tag === "Loopback") {
            for (const port of spec.containers.flatMap((c) => c.ports ?? [])) portMap.set(port.containerPort, yield* freePort)
          }
          const kubeconfig = yield* identity(spec, podDir)
          const folders = yield* mountVolumes(spec, podDir)
          const endpoints = network._tag === "Netns" ? yield* register(podName, template, address) : []
          yield* Effect.addFinalizer(() => unregister(podName, endpoints))
          const grace = Duration.seconds(spec.terminationGracePeriodSeconds ?? 30)
          const containers: Array<Container> = []
          for (const container of spec.containers) {
            const c = yield* startContainer(podName, podDir, container, folders, kubeconfig, portMap)
            containers.push(c)
            yield* Effect.addFinalizer(() => stopProcess(c.child, grace))
          }
          const port = (containerPort: number) => portMap.get(containerPort) ?? containerPort
          const url = (containerPort: number, path: string) => `http://${address}:${port(containerPort)}${path}`
          const probes = spec.containers.flatMap((c) => (c.readinessProbe?.httpGet === undefined ? [] : [{ container: c.name, probe: c.readinessProbe.httpGet }]))
          const container = (name: string) => {
            const found = containers.find((c) => c.name === name)
            if (found === undefined) throw new Error(`${podName}: no container ${name}`)
            return found
          }
          const ready = Effect.forEach(probes, ({ container: name, probe }) => {
            const c = container(name)
            const target = url(Number(probe.port), probe.path ?? "/")
            const check = Effect.gen(function*() {
              if (exitedOf(c.child)) return yield* Effect.die(new KubeletError({ message: `${podName}/${name} exited (${c.child.exitCode ?? c.child.signalCode}):\n${tail(c.output.text)}` }))
              return yield* Effect.orElseSucceed(get(target), () => ({ status: 0, body: "" }))
            })
            return until(check, (r) => r.status === 200, `${podName}/${name} ready at ${target}`, { timeout: "90 seconds", interval: "250 millis" }).pipe(
              Effect.mapError((error) => new KubeletError({ message: `${error.message}\n${tail(c.output.text)}` }))
            )
          }, { discard: true })
          return {
            name: podName,
            owner,
            address,
            containers,
            container,
            port,
            url,
            ready,
            get exited() {
              return containers.every((c) => exitedOf(c.child))
            }
          } satisfies Pod
        })
        const pod = yield* build.pipe(Scope.provide(scope), Effect.onError(() => Scope.close(scope, Exit.void)))
        return { pod, scope }
      })

    const templateHash = (template: V1PodTemplateSpec) => Crypto.createHash("sha256").update(JSON.stringify(template)).digest("hex")

    const sync = Effect.gen(function*() {
      const deployments = (yield* call("list Deployments", () => apps.listNamespacedDeployment({ namespace }))).items
      const wanted = new Map(deployments.filter((d) => (d.spec?.replicas ?? 1) > 0).map((d) => [`Deployment/${d.metadata!.name!}`, d.spec!.template]))
      for (const [owner, entry] of [...running]) {
        const template = wanted.get(owner)
        if (template !== undefined && templateHash(template) === entry.hash) continue
        running.delete(owner)
        yield* Scope.close(entry.scope, Exit.void)
      }
      for (const [owner, template] of wanted) {
        if (running.has(owner)) continue
        const { pod, scope } = yield* startPod(owner, template)
        running.set(owner, { pod, hash: templateHash(template), scope })
      }
    })

    // Looked up when run, not when built: a kept Effect follows the pod across replacements.
    const pod = (deployment: string) =>
      Effect.suspend(() => {
        const entry = running.get(`Deployment/${deployment}`)
        return entry === undefined ? fail(`no pod of Deployment ${deployment} runs`) : Effect.succeed(entry.pod)
      })

    const runJob = (name: string) =>
      Effect.gen(function*() {
        const job = yield* call(`get Job ${name}`, () => batch.readNamespacedJob({ namespace, name }))
        const template = job.spec!.template
        const attemptsAllowed = 1 + (job.spec?.backoffLimit ?? 6)
        let output = ""
        for (let attempt = 1; ; attempt++) {
          const { pod, scope } = yield* startPod(`Job/${name}`, template)
          const codes = yield* Effect.forEach(pod.containers, (c) =>
            Effect.callback<number | null>((resume) => {
              if (exitedOf(c.child)) return resume(Effect.succeed(c.child.exitCode))
              c.child.once("exit", (code) => resume(Effect.succeed(code)))
            }).pipe(
              Effect.timeoutOrElse({ duration: "60 seconds", orElse: () => Effect.succeed(-1) })
            ))
          output += pod.containers.map((c) => c.output.text).join("")
          yield* Scope.close(scope, Exit.void)
          const code = codes.find((c) => c !== 0) ?? 0
          if (code === 0 || template.spec?.restartPolicy === "Never" || attempt >= attemptsAllowed) return { code, output, attempts: attempt }
        }
      })

    yield* Effect.addFinalizer(() =>
      Effect.forEach([...running.values()], (entry) => Scope.close(entry.scope, Exit.void), { concurrency: "unbounded", discard: true }).pipe(
        Effect.tap(() => Effect.sync(() => running.clear()))
      ))

    return { sync, pod, runJob, processes: () => [...started] } satisfies Node
  })
