/**
 * A real kube-apiserver (v1.20.2) with its own etcd for integration tests, started and stopped with a
 * `Scope`, in the manner of controller-runtime's envtest.
 *
 * Each instance gets a temporary folder with a fresh PKI made by `openssl` (CA, serving certificate,
 * a `system:masters` admin client certificate, a service-account key pair), free loopback ports,
 * RBAC authorization and working TokenRequest/TokenReview. Several instances start in parallel
 * (hub, hosting, managed). There is no controller manager: deleted namespaces stay Terminating,
 * nothing is garbage-collected, and no `default` ServiceAccount appears on its own. Fault tests
 * kill and restart an instance's kube-apiserver on its etcd ({@link stopApiserver},
 * {@link startApiserver}).
 *
 * Processes never outlive the test process: they are stopped when the scope closes (also when
 * startup failed half-way), killed by an exit hook if the process exits without closing it, and
 * killed by a small watchdog process when the test process dies without running any code.
 *
 * @since 0.1.0
 */
import {
  ApiextensionsV1Api,
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  loadAllYaml,
  type V1CustomResourceDefinition
} from "@kubernetes/client-node"
import { Data, Duration, Effect, Exit, Option, Schema, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as Connection from "../kube/Connection.ts"
import * as EnvtestAssets from "./EnvtestAssets.ts"

/** Issuer and audience of service-account tokens, as a cluster's in-cluster clients expect. */
export const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

export interface Options {
  /** Names the instance in kubeconfig contexts, temp folders and messages (e.g. "hub"). */
  readonly name: string
  /** CustomResourceDefinitions as YAML texts (several documents per text allowed). */
  readonly crds?: ReadonlyArray<string>
  /** Where kube-apiserver listens; default 127.0.0.1. etcd always stays on 127.0.0.1. */
  readonly bindAddress?: string
  /** Additional IP addresses for the serving certificate (e.g. a veth address a relay reaches it on). */
  readonly extraIpSans?: ReadonlyArray<string>
  /** Bound on reaching `/readyz`; default 90 seconds (three instances on two cores take ~15 s). */
  readonly startupTimeout?: Duration.Input
  /**
   * Write an audit log (every request at Metadata level, one JSON line per completed request) to
   * {@link ApiserverInfo.auditLogPath}, so tests count API requests from the server's own record.
   */
  readonly auditLog?: boolean
}

export interface ApiserverInfo {
  readonly name: string
  /** `https://<host>:<port>` */
  readonly server: string
  readonly host: string
  readonly port: number
  /** An admin (system:masters) kubeconfig with everything inlined; lives in {@link dir}. */
  readonly kubeconfigPath: string
  readonly kubeconfigYaml: string
  /** The CA that signed the serving certificate (and the admin client certificate). */
  readonly caPem: string
  /** The instance's temporary folder (PKI, logs, etcd data); removed when the scope closes. */
  readonly dir: string
  readonly etcdUrl: string
  readonly pids: { readonly apiserver: number; readonly etcd: number }
  /** The audit log (JSON lines), when {@link Options.auditLog} was set. */
  readonly auditLogPath?: string
}

/** One audit event, the fields tests look at. */
export interface AuditEvent {
  readonly stage: string
  readonly verb: string
  readonly requestURI: string
  readonly user: { readonly username?: string }
  readonly userAgent?: string
  readonly objectRef?: { readonly resource?: string; readonly subresource?: string; readonly namespace?: string; readonly name?: string }
  readonly responseStatus?: { readonly code?: number }
  readonly requestReceivedTimestamp: string
}

/**
 * The completed requests in an instance's audit log so far (stage `ResponseComplete`; a watch
 * appears when it ends, and as `ResponseStarted` when it starts, which is also returned).
 */
export const auditEvents = (info: ApiserverInfo): Effect.Effect<ReadonlyArray<AuditEvent>, ApiserverError> =>
  info.auditLogPath === undefined
    ? Effect.fail(new ApiserverError({ reason: "InvalidOptions", message: `${info.name}: started without auditLog` }))
    : io(`${info.name}: reading the audit log`, () =>
      Fs.readFileSync(info.auditLogPath!, "utf8")
        .split("\n")
        .filter((line) => line.trim() !== "")
        .flatMap((line) => {
          try {
            return [JSON.parse(line) as AuditEvent]
          } catch {
            return [] // a line being written
          }
        }))

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`

export class ApiserverError extends Schema.TaggedError<ApiserverError>()("ApiserverError", {
  reason: Schema.Literals(["AssetsUnavailable", "InvalidOptions", "Pki", "Spawn", "PortInUse", "Startup", "Kube", "Io"]),
  message: Schema.String
}) {}

/**
 * Starts etcd and kube-apiserver, waits for `/readyz`, writes an admin kubeconfig and installs the
 * given CRDs (each Established and answering a list call). Everything is torn down with the scope.
 */
export const make = Effect.fn("Apiserver.make")(function*(
  options: Options
): Effect.fn.Return<ApiserverInfo, ApiserverError, Scope.Scope> {
  const name = options.name
  const bindAddress = options.bindAddress ?? "127.0.0.1"
  const extraIpSans = options.extraIpSans ?? []
  for (const ip of [bindAddress, ...extraIpSans]) {
    if (Net.isIP(ip) === 0) {
      return yield* new ApiserverError({ reason: "InvalidOptions", message: `${name}: "${ip}" is not an IP address` })
    }
  }
  const assets = yield* EnvtestAssets.resolve.pipe(
    Effect.mapError((error) => new ApiserverError({ reason: "AssetsUnavailable", message: error.message }))
  )
  // The instance's own sequential scope: the caller's scope may run its finalizers in parallel, but
  // apiserver must stop before etcd and both before their folder goes. A failed start is torn down
  // at once rather than when the caller's scope closes.
  const instance = yield* Scope.fork(yield* Effect.scope, "sequential")
  return yield* startInstance({ name, bindAddress, extraIpSans, assets, options }).pipe(
    Scope.provide(instance),
    Effect.onError((cause) => Scope.close(instance, Exit.failCause(cause)))
  )
})

const startInstance = Effect.fnUntraced(function*(input: {
  readonly name: string
  readonly bindAddress: string
  readonly extraIpSans: ReadonlyArray<string>
  readonly assets: EnvtestAssets.AssetPaths
  readonly options: Options
}): Effect.fn.Return<ApiserverInfo, ApiserverError, Scope.Scope> {
  const { assets, bindAddress, extraIpSans, name, options } = input
  const host = connectHost(bindAddress)
  const dir = yield* tempDir(name)
  const pki = yield* makePki(dir, [...new Set([host, ...(isUnspecified(bindAddress) ? [] : [bindAddress]), ...extraIpSans])])

  // Ports are only free until someone binds them; a collision shows up as a bind error at startup,
  // so start again on fresh ports (in a child scope, so the failed attempt's processes go first).
  const parent = yield* Effect.scope
  const startupTimeout = options.startupTimeout ?? Duration.seconds(90)
  let attempt = 1
  let started: Started
  while (true) {
    const scope = yield* Scope.fork(parent, "sequential")
    const exit = yield* startProcesses({ name, assets, dir, pki, bindAddress, host, attempt, startupTimeout, auditLog: options.auditLog === true }).pipe(
      Scope.provide(scope),
      Effect.exit
    )
    if (Exit.isSuccess(exit)) {
      started = exit.value
      break
    }
    yield* Scope.close(scope, exit)
    const error = Exit.findErrorOption(exit)
    if (Option.isNone(error) || error.value.reason !== "PortInUse" || attempt >= 5) return yield* Effect.failCause(exit.cause)
    attempt++
  }

  const server = `https://${urlHost(host)}:${started.port}`
  const kubeconfigYaml = adminKubeconfig(name, server, pki)
  const kubeconfigPath = Path.join(dir, "kubeconfig")
  yield* io(`${name}: writing the kubeconfig`, () => Fs.writeFileSync(kubeconfigPath, kubeconfigYaml, { mode: 0o600 }))

  const info: ApiserverInfo = {
    name,
    server,
    host,
    port: started.port,
    kubeconfigPath,
    kubeconfigYaml,
    caPem: pki.caPem,
    dir,
    etcdUrl: started.etcdUrl,
    pids: started.pids,
    ...(options.auditLog === true ? { auditLogPath: Path.join(dir, "audit.log") } : {})
  }
  controls.set(info, started.control)
  for (const crd of options.crds ?? []) yield* installCrds(info, crd)
  return info
})

/** A client-node `KubeConfig` for the admin user of an instance. */
export const kubeConfig = (info: ApiserverInfo): KubeConfig => {
  const kc = new KubeConfig()
  kc.loadFromString(info.kubeconfigYaml)
  return kc
}

/**
 * The connection tether's own client uses for the admin user of an instance, read from its
 * kubeconfig by tether's kubeconfig reader; `server` replaces the instance's address (a proxy in
 * front of it).
 */
export const connection = (info: ApiserverInfo, server?: string): Connection.Connection =>
  connectionOf(server === undefined ? info.kubeconfigYaml : info.kubeconfigYaml.split(info.server).join(server))

/** The connection for a self-contained kubeconfig (inline CA and credentials). */
export const connectionOf = (kubeconfigYaml: string): Connection.Connection => {
  const source = Kubeconfig.parseSource(kubeconfigYaml)
  if (source._tag === "Failure") throw new Error(source.failure.message)
  return Connection.fromEntry(source.success.cluster, source.success.credentials)
}

/** Creates a namespace; succeeds when it already exists. */
export const createNamespace = Effect.fn("Apiserver.createNamespace")(function*(info: ApiserverInfo, name: string) {
  const core = kubeConfig(info).makeApiClient(CoreV1Api)
  yield* kubeCreate(`${info.name}: creating namespace ${name}`, () => core.createNamespace({ body: { metadata: { name } } }))
})

/**
 * A real service-account token from TokenRequest, creating the namespace and ServiceAccount when
 * missing (nothing creates them in this cluster). `expirationSeconds` must be at least 600.
 */
export const serviceAccountToken = Effect.fn("Apiserver.serviceAccountToken")(function*(
  info: ApiserverInfo,
  namespace: string,
  name: string,
  expirationSeconds: number,
  audiences: ReadonlyArray<string> = [serviceAccountIssuer]
) {
  const core = kubeConfig(info).makeApiClient(CoreV1Api)
  yield* createNamespace(info, namespace)
  yield* kubeCreate(
    `${info.name}: creating ServiceAccount ${namespace}/${name}`,
    () => core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } })
  )
  const response = yield* kube(
    `${info.name}: TokenRequest for ${namespace}/${name}`,
    () =>
      core.createNamespacedServiceAccountToken({
        namespace,
        name,
        body: { spec: { audiences: [...audiences], expirationSeconds } }
      })
  )
  const token = response.status?.token
  if (token === undefined || token === "") {
    return yield* new ApiserverError({
      reason: "Kube",
      message: `${info.name}: TokenRequest for ${namespace}/${name} returned no token`
    })
  }
  return token
})

/** A kubeconfig YAML that authenticates to the instance with a bearer token. */
export const kubeconfigForToken = (
  info: ApiserverInfo,
  token: string,
  options?: { readonly namespace?: string; readonly user?: string }
): string =>
  kubeconfigYaml({
    name: info.name,
    server: info.server,
    caPem: info.caPem,
    user: options?.user ?? "token",
    credentials: { token },
    ...(options?.namespace === undefined ? {} : { namespace: options.namespace })
  })

// ---------------------------------------------------------------------------------------------------
// Processes

interface Pki {
  readonly dir: string
  readonly caPem: string
  readonly caCrt: string
  readonly servingCrt: string
  readonly servingKey: string
  readonly adminCertPem: string
  readonly adminKeyPem: string
  readonly saPub: string
  readonly saKey: string
}

interface Started {
  readonly port: number
  readonly etcdUrl: string
  readonly pids: { readonly apiserver: number; readonly etcd: number }
  readonly control: Control
}

interface Control {
  readonly stop: (signal: "SIGKILL" | "SIGTERM") => Effect.Effect<void>
  readonly start: Effect.Effect<void, ApiserverError>
}

const controls = new WeakMap<ApiserverInfo, Control>()

/**
 * Stop an instance's kube-apiserver process (etcd keeps running): `SIGKILL` (default) kills it
 * as a crash would, `SIGTERM` lets it shut down. Resolves once the process is gone.
 */
export const stopApiserver = (info: ApiserverInfo, signal: "SIGKILL" | "SIGTERM" = "SIGKILL"): Effect.Effect<void, ApiserverError> =>
  Effect.suspend(() => {
    const control = controls.get(info)
    return control === undefined
      ? Effect.fail(new ApiserverError({ reason: "InvalidOptions", message: `${info.name}: not an instance of this process` }))
      : control.stop(signal)
  })

/**
 * Start a stopped kube-apiserver again, with the same flags, port, PKI and etcd (the data
 * survives), and wait for its `/readyz`. {@link ApiserverInfo.pids} keeps the first pid.
 */
export const startApiserver = (info: ApiserverInfo): Effect.Effect<void, ApiserverError> =>
  Effect.suspend(() => {
    const control = controls.get(info)
    return control === undefined
      ? Effect.fail(new ApiserverError({ reason: "InvalidOptions", message: `${info.name}: not an instance of this process` }))
      : control.start
  })

interface Proc {
  readonly label: string
  readonly child: ChildProcess.ChildProcess
  readonly pid: number
  readonly logPath: string
}

const startProcesses = Effect.fnUntraced(function*(input: {
  readonly name: string
  readonly assets: EnvtestAssets.AssetPaths
  readonly dir: string
  readonly pki: Pki
  readonly bindAddress: string
  readonly host: string
  readonly attempt: number
  readonly startupTimeout: Duration.Input
  readonly auditLog: boolean
}) {
  const { assets, dir, host, name, pki } = input
  const audit: Array<string> = []
  if (input.auditLog) {
    const policyPath = Path.join(dir, "audit-policy.yaml")
    yield* io(`${name}: writing the audit policy`, () => Fs.writeFileSync(policyPath, auditPolicy))
    audit.push(`--audit-policy-file=${policyPath}`, `--audit-log-path=${Path.join(dir, "audit.log")}`, "--audit-log-format=json")
  }
  const etcdClientPort = yield* freePort("127.0.0.1")
  const etcdPeerPort = yield* freePort("127.0.0.1")
  const port = yield* freePort(host)
  const etcdUrl = `http://127.0.0.1:${etcdClientPort}`
  const peerUrl = `http://127.0.0.1:${etcdPeerPort}`

  const etcd = yield* spawnProcess(`${name} etcd`, assets.etcd, [
    "--name=envtest",
    `--data-dir=${Path.join(dir, `etcd-data-${input.attempt}`)}`,
    `--listen-client-urls=${etcdUrl}`,
    `--advertise-client-urls=${etcdUrl}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=envtest=${peerUrl}`,
    "--logger=zap",
    "--log-level=warn"
  ], Path.join(dir, "etcd.log"), Duration.seconds(5))

  const deadline = Duration.fromInputUnsafe(input.startupTimeout)
  yield* waitFor(
    `${name}: etcd on ${etcdUrl}`,
    [etcd],
    Effect.promise(() => httpProbe(`${etcdUrl}/health`)),
    deadline
  )

  const apiserverArgs = [
    `--etcd-servers=${etcdUrl}`,
    `--bind-address=${input.bindAddress}`,
    `--advertise-address=${isUnspecified(input.bindAddress) ? host : input.bindAddress}`,
    `--secure-port=${port}`,
    "--insecure-port=0",
    `--cert-dir=${Path.join(dir, "apiserver-certs")}`,
    `--tls-cert-file=${pki.servingCrt}`,
    `--tls-private-key-file=${pki.servingKey}`,
    `--client-ca-file=${pki.caCrt}`,
    `--service-account-issuer=${serviceAccountIssuer}`,
    `--service-account-key-file=${pki.saPub}`,
    `--service-account-signing-key-file=${pki.saKey}`,
    `--api-audiences=${serviceAccountIssuer}`,
    "--authorization-mode=RBAC",
    "--disable-admission-plugins=ServiceAccount",
    "--service-cluster-ip-range=10.0.0.0/24",
    "--allow-privileged=true",
    ...audit
  ]
  const tls = { ca: pki.caPem, cert: pki.adminCertPem, key: pki.adminKeyPem }
  // Each start of kube-apiserver (the first, and any restart) gets its own log.
  let starts = 0
  const scope = yield* Effect.scope
  const launch = Effect.gen(function*() {
    starts++
    const log = Path.join(dir, starts === 1 ? "kube-apiserver.log" : `kube-apiserver-${starts}.log`)
    const proc = yield* spawnProcess(`${name} kube-apiserver`, assets.kubeApiserver, apiserverArgs, log, Duration.seconds(10)).pipe(
      Scope.provide(scope)
    )
    yield* waitFor(
      `${name}: kube-apiserver /readyz on ${host}:${port}`,
      [etcd, proc],
      Effect.promise(() => httpsProbe(host, port, "/readyz", tls)),
      deadline
    )
    return proc
  })
  let apiserver = yield* launch
  const control: Control = {
    stop: (signal) =>
      Effect.suspend(() => (signal === "SIGKILL" ? kill(apiserver) : terminate(apiserver, Duration.seconds(10)))),
    start: Effect.suspend(() =>
      hasExited(apiserver.child)
        ? Effect.map(launch, (proc) => void (apiserver = proc))
        : Effect.fail(new ApiserverError({ reason: "InvalidOptions", message: `${name}: kube-apiserver is running; stop it first` }))
    )
  }
  return { port, etcdUrl, pids: { apiserver: apiserver.pid, etcd: etcd.pid }, control } satisfies Started
})

/** SIGKILL, resolved once the process is gone. */
const kill = (proc: Proc): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (hasExited(proc.child)) return resume(Effect.void)
    proc.child.once("exit", () => resume(Effect.void))
    proc.child.kill("SIGKILL")
  })

// Logs go to files (no pipe to drain, and they survive for the error message). The environment is
// minimal so that ETCD_* / KUBE* variables of the developer's shell cannot change the setup.
const spawnProcess = (
  label: string,
  file: string,
  args: ReadonlyArray<string>,
  logPath: string,
  grace: Duration.Duration
): Effect.Effect<Proc, ApiserverError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Proc, ApiserverError>((resume) => {
      let fd: number
      try {
        fd = Fs.openSync(logPath, "w")
      } catch (error) {
        return resume(Effect.fail(new ApiserverError({ reason: "Io", message: `${label}: ${describe(error)}` })))
      }
      const env: Record<string, string> = { PATH: process.env["PATH"] ?? "/usr/bin:/bin" }
      const tmp = process.env["TMPDIR"]
      if (tmp !== undefined) env["TMPDIR"] = tmp
      const child = ChildProcess.spawn(file, [...args], { stdio: ["ignore", fd, fd], env })
      Fs.closeSync(fd)
      child.once("error", (error) => {
        resume(Effect.fail(new ApiserverError({ reason: "Spawn", message: `${label}: could not start ${file}: ${error.message}` })))
      })
      child.once("spawn", () => {
        const pid = child.pid ?? -1
        track(child)
        resume(Effect.succeed({ label, child, pid, logPath }))
      })
    }),
    (proc) => terminate(proc, grace)
  )

// SIGTERM, then SIGKILL after the grace period; resolves once the process is gone (reaped).
const terminate = (proc: Proc, grace: Duration.Duration): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const { child } = proc
    if (hasExited(child)) return resume(Effect.void)
    let killTimer: NodeJS.Timeout | undefined
    let giveUpTimer: NodeJS.Timeout | undefined
    child.once("exit", () => {
      clearTimeout(killTimer)
      clearTimeout(giveUpTimer)
      resume(Effect.void)
    })
    child.kill("SIGTERM")
    killTimer = setTimeout(() => {
      child.kill("SIGKILL")
      // SIGKILL cannot be ignored; this only guards against a missed exit event.
      giveUpTimer = setTimeout(() => resume(Effect.void), 5_000)
    }, Duration.toMillis(grace))
  })

const hasExited = (child: ChildProcess.ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null

// Polls `probe` until it answers true; fails at once with the log tail when a watched process exits,
// and with the log tail when the deadline passes.
const waitFor = (
  what: string,
  watched: ReadonlyArray<Proc>,
  probe: Effect.Effect<boolean>,
  deadline: Duration.Duration,
  lastProblem?: () => string
): Effect.Effect<void, ApiserverError> =>
  Effect.gen(function*() {
    while (true) {
      const dead = watched.find((proc) => hasExited(proc.child))
      if (dead !== undefined) {
        const tail = logTail(dead.logPath)
        const how = dead.child.exitCode !== null ? `exited with code ${dead.child.exitCode}` : `was killed by ${dead.child.signalCode}`
        return yield* new ApiserverError({
          reason: /address already in use/.test(tail) ? "PortInUse" : "Startup",
          message: `${dead.label} ${how} while waiting for ${what}; last lines of ${Path.basename(dead.logPath)}:\n${tail}`
        })
      }
      const ok = yield* probe
      if (ok) return
      yield* Effect.sleep("100 millis")
    }
  }).pipe(
    Effect.timeoutOrElse({
      duration: deadline,
      orElse: () =>
        Effect.fail(
          new ApiserverError({
            reason: "Startup",
            message: `timed out after ${Duration.format(deadline)} waiting for ${what}` +
              (lastProblem === undefined ? "" : ` (last problem: ${lastProblem()})`) +
              watched.map((proc) => `\nlast lines of ${Path.basename(proc.logPath)}:\n${logTail(proc.logPath)}`).join("")
          })
        )
    })
  )

const httpProbe = (url: string): Promise<boolean> =>
  new Promise((resolve) => {
    const request = Http.get(url, { agent: false, timeout: 2_000 }, (response) => {
      response.resume()
      resolve(response.statusCode === 200)
    })
    request.once("timeout", () => request.destroy())
    request.once("error", () => resolve(false))
  })

const httpsProbe = (
  host: string,
  port: number,
  path: string,
  tls: { readonly ca: string; readonly cert: string; readonly key: string }
): Promise<boolean> =>
  new Promise((resolve) => {
    const request = Https.get({ host, port, path, ...tls, agent: false, timeout: 2_000 }, (response) => {
      response.resume()
      resolve(response.statusCode === 200)
    })
    request.once("timeout", () => request.destroy())
    request.once("error", () => resolve(false))
  })

const logTail = (file: string, lines = 25): string => {
  try {
    const text = Fs.readFileSync(file, "utf8")
    return text.trimEnd().split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

// Ports handed out by this process; the OS may offer a just-closed port again, and parallel
// instances must not get the same one.
const handedOut = new Set<number>()

const freePort = (host: string): Effect.Effect<number, ApiserverError> =>
  Effect.callback<number, ApiserverError>((resume) => {
    const server = Net.createServer()
    server.unref()
    server.once("error", (error: NodeJS.ErrnoException) =>
      resume(Effect.fail(
        new ApiserverError({
          reason: error.code === "EADDRINUSE" ? "PortInUse" : "Startup",
          message: `cannot listen on ${host}: ${error.message}`
        })
      )))
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resume(Effect.succeed(port)))
    })
  }).pipe(
    Effect.repeat({ until: (port) => port !== 0 && !handedOut.has(port), times: 20 }),
    Effect.tap((port) => Effect.sync(() => handedOut.add(port)))
  )

// ---------------------------------------------------------------------------------------------------
// Watchdog: nothing may outlive the test process, even when it is killed with SIGKILL.

const live = new Set<ChildProcess.ChildProcess>()
const liveDirs = new Set<string>()
let watchdog: ChildProcess.ChildProcess | undefined
let exitHookInstalled = false

// Runs in a separate node process whose stdin is a pipe from us: when we die, the pipe closes, and it
// kills what we registered and removes the temp folders.
const watchdogSource = `
const fs = require("node:fs");
const pids = new Set(), dirs = new Set();
let buffer = "";
process.on("SIGINT", () => {});
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffer += chunk;
  let i;
  while ((i = buffer.indexOf("\\n")) >= 0) {
    const m = JSON.parse(buffer.slice(0, i)); buffer = buffer.slice(i + 1);
    const set = m.pid !== undefined ? pids : dirs, v = m.pid !== undefined ? m.pid : m.dir;
    if (m.op === "add") set.add(v); else set.delete(v);
  }
});
const reap = () => {
  for (const pid of pids) { try { process.kill(pid, "SIGKILL"); } catch {} }
  // Give killed processes a moment to release their files before removing the folders.
  setTimeout(() => {
    for (const dir of dirs) { try { fs.rmSync(dir, { recursive: true, force: true }); } catch {} }
    process.exit(0);
  }, pids.size === 0 ? 0 : 300);
};
process.stdin.on("end", reap);
process.stdin.on("error", reap);
`

const tellWatchdog = (message: { op: "add" | "del"; pid?: number; dir?: string }): void => {
  if (watchdog === undefined) {
    try {
      const child = ChildProcess.spawn(process.execPath, ["-e", watchdogSource], {
        stdio: ["pipe", "ignore", "ignore"],
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" }
      })
      child.on("error", () => {})
      child.stdin?.on("error", () => {})
      child.unref()
      ;(child.stdin as unknown as Net.Socket | null)?.unref()
      watchdog = child
    } catch {
      return
    }
  }
  const stdin = watchdog.stdin
  if (stdin !== null && stdin.writable) stdin.write(`${JSON.stringify(message)}\n`)
}

const installExitHook = (): void => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once("exit", () => {
    for (const child of live) if (!hasExited(child)) child.kill("SIGKILL")
    for (const dir of liveDirs) Fs.rmSync(dir, { recursive: true, force: true })
  })
}

const track = (child: ChildProcess.ChildProcess): void => {
  installExitHook()
  live.add(child)
  const pid = child.pid
  if (pid !== undefined) tellWatchdog({ op: "add", pid })
  child.once("exit", () => {
    live.delete(child)
    if (pid !== undefined) tellWatchdog({ op: "del", pid })
  })
}

const tempDir = (name: string): Effect.Effect<string, ApiserverError, Scope.Scope> =>
  Effect.acquireRelease(
    io(`${name}: creating a temp folder`, () => {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), `tether-apiserver-${name.replace(/[^A-Za-z0-9-]/g, "_")}-`))
      installExitHook()
      liveDirs.add(dir)
      tellWatchdog({ op: "add", dir })
      return dir
    }),
    (dir) =>
      Effect.sync(() => {
        Fs.rmSync(dir, { recursive: true, force: true })
        liveDirs.delete(dir)
        tellWatchdog({ op: "del", dir })
      })
  )

// ---------------------------------------------------------------------------------------------------
// PKI

const makePki = Effect.fnUntraced(function*(dir: string, ipSans: ReadonlyArray<string>) {
  const pkiDir = Path.join(dir, "pki")
  const at = (file: string) => Path.join(pkiDir, file)
  const altNames = [
    ...ipSans.map((ip) => `IP:${ip}`),
    "IP:10.0.0.1", // the `kubernetes` Service address in --service-cluster-ip-range
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local"
  ]
  yield* io("creating the PKI folder", () => {
    Fs.mkdirSync(pkiDir, { mode: 0o700 })
    // Own configs, so the machine's openssl.cnf cannot add or forbid extensions.
    Fs.writeFileSync(at("ca.cnf"), reqConfig("CN = tether-envtest-ca", "v3_ca"))
    Fs.writeFileSync(at("serving.cnf"), reqConfig("CN = kube-apiserver"))
    Fs.writeFileSync(at("admin.cnf"), reqConfig("O = system:masters\nCN = tether-admin"))
    Fs.writeFileSync(
      at("serving.ext"),
      "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n" +
        `extendedKeyUsage = serverAuth\nsubjectAltName = ${altNames.join(",")}\n`
    )
    Fs.writeFileSync(
      at("client.ext"),
      "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n" +
        "extendedKeyUsage = clientAuth\n"
    )
  })
  const key = ["-newkey", "rsa:2048", "-nodes"]
  // Key generation dominates (~0.2 s per RSA key), so the independent steps run side by side.
  yield* Effect.all([
    openssl(pkiDir, ["req", "-x509", ...key, "-config", "ca.cnf", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650"]),
    openssl(pkiDir, ["req", ...key, "-config", "serving.cnf", "-keyout", "serving.key", "-out", "serving.csr"]),
    openssl(pkiDir, ["req", ...key, "-config", "admin.cnf", "-keyout", "admin.key", "-out", "admin.csr"]),
    openssl(pkiDir, ["genrsa", "-out", "sa.key", "2048"])
  ], { concurrency: "unbounded", discard: true })
  yield* Effect.all([
    openssl(pkiDir, [
      "x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "2",
      "-days", "3650", "-sha256", "-extfile", "serving.ext", "-out", "serving.crt"
    ]),
    openssl(pkiDir, [
      "x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "3",
      "-days", "3650", "-sha256", "-extfile", "client.ext", "-out", "admin.crt"
    ]),
    openssl(pkiDir, ["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
  ], { concurrency: "unbounded", discard: true })
  return yield* io("reading the PKI", () => ({
    dir: pkiDir,
    caPem: Fs.readFileSync(at("ca.crt"), "utf8"),
    caCrt: at("ca.crt"),
    servingCrt: at("serving.crt"),
    servingKey: at("serving.key"),
    adminCertPem: Fs.readFileSync(at("admin.crt"), "utf8"),
    adminKeyPem: Fs.readFileSync(at("admin.key"), "utf8"),
    saPub: at("sa.pub"),
    saKey: at("sa.key")
  } satisfies Pki))
})

const reqConfig = (subject: string, x509Extensions?: string): string =>
  "[req]\nprompt = no\ndistinguished_name = dn\n" +
  (x509Extensions === undefined ? "" : `x509_extensions = ${x509Extensions}\n`) +
  `[dn]\n${subject}\n` +
  "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign,digitalSignature\n" +
  "subjectKeyIdentifier = hash\n"

const openssl = (cwd: string, args: ReadonlyArray<string>): Effect.Effect<void, ApiserverError> =>
  Effect.callback<void, ApiserverError>((resume) => {
    const child = ChildProcess.execFile("openssl", [...args], { cwd, timeout: 180_000 }, (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      resume(Effect.fail(
        new ApiserverError({
          reason: "Pki",
          message: `openssl ${args[0]} failed (is openssl installed?): ${error.message}\n${stderr.trim()}`
        })
      ))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

// ---------------------------------------------------------------------------------------------------
// Kubeconfig

const adminKubeconfig = (name: string, server: string, pki: Pki): string =>
  kubeconfigYaml({
    name,
    server,
    caPem: pki.caPem,
    user: "admin",
    credentials: {
      "client-certificate-data": base64(pki.adminCertPem),
      "client-key-data": base64(pki.adminKeyPem)
    }
  })

// JSON strings are valid YAML scalars, so every value is quoted that way.
const kubeconfigYaml = (input: {
  readonly name: string
  readonly server: string
  readonly caPem: string
  readonly user: string
  readonly credentials: Record<string, string>
  readonly namespace?: string
}): string => {
  const q = JSON.stringify
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    `- name: ${q(input.name)}`,
    "  cluster:",
    `    server: ${q(input.server)}`,
    `    certificate-authority-data: ${q(base64(input.caPem))}`,
    "users:",
    `- name: ${q(input.user)}`,
    "  user:",
    ...Object.entries(input.credentials).map(([key, value]) => `    ${key}: ${q(value)}`),
    "contexts:",
    `- name: ${q(input.name)}`,
    "  context:",
    `    cluster: ${q(input.name)}`,
    `    user: ${q(input.user)}`,
    ...(input.namespace === undefined ? [] : [`    namespace: ${q(input.namespace)}`]),
    `current-context: ${q(input.name)}`,
    ""
  ].join("\n")
}

const base64 = (text: string): string => Buffer.from(text, "utf8").toString("base64")

// ---------------------------------------------------------------------------------------------------
// CRDs

const installCrds = Effect.fnUntraced(function*(info: ApiserverInfo, yamlText: string) {
  const documents = yield* Effect.try({
    try: () => loadAllYaml(yamlText).filter((doc) => doc !== null && doc !== undefined),
    catch: (error) => new ApiserverError({ reason: "Kube", message: `${info.name}: CRD YAML does not parse: ${describe(error)}` })
  })
  const kc = kubeConfig(info)
  const extensions = kc.makeApiClient(ApiextensionsV1Api)
  const custom = kc.makeApiClient(CustomObjectsApi)
  for (const doc of documents as ReadonlyArray<V1CustomResourceDefinition>) {
    const crdName = doc.metadata?.name ?? "(unnamed)"
    if (doc.kind !== "CustomResourceDefinition" || doc.apiVersion !== "apiextensions.k8s.io/v1") {
      return yield* new ApiserverError({
        reason: "Kube",
        message: `${info.name}: expected apiextensions.k8s.io/v1 CustomResourceDefinitions, got ${doc.apiVersion}/${doc.kind} ${crdName}`
      })
    }
    yield* kubeCreate(`${info.name}: creating CRD ${crdName}`, () => extensions.createCustomResourceDefinition({ body: doc }))
    const served = doc.spec.versions.filter((version) => version.served).map((version) => version.name)
    // Established alone is not enough: discovery and the REST handler for the new resource lag a
    // little behind, and the first request of a test must not get a 404.
    let lastProblem = "not checked yet"
    const ready = Effect.gen(function*() {
      const current = yield* kube(`reading CRD ${crdName}`, () => extensions.readCustomResourceDefinition({ name: crdName }))
      if (current.status?.conditions?.some((c) => c.type === "Established" && c.status === "True") !== true) {
        lastProblem = "not Established"
        return false
      }
      for (const version of served) {
        yield* kube(
          `listing ${doc.spec.names.plural}.${doc.spec.group}/${version}`,
          () => custom.listClusterCustomObject({ group: doc.spec.group, version, plural: doc.spec.names.plural, limit: 1 })
        )
      }
      return true
    }).pipe(
      Effect.catch((error) =>
        Effect.sync(() => {
          lastProblem = error.message
          return false
        })
      )
    )
    yield* waitFor(`${info.name}: CRD ${crdName} Established and served`, [], ready, Duration.seconds(60), () => lastProblem)
  }
})

// ---------------------------------------------------------------------------------------------------
// Helpers

const io = <A>(what: string, f: () => A): Effect.Effect<A, ApiserverError> =>
  Effect.try({ try: f, catch: (error) => new ApiserverError({ reason: "Io", message: `${what}: ${describe(error)}` }) })

// Errors carry the HTTP status and the server's Status message only: never headers or bodies of
// requests, which may hold credentials.
const kubeError = (what: string, error: unknown): ApiserverError =>
  new ApiserverError({
    reason: "Kube",
    message: `${what} failed: ${
      error instanceof ApiException ? `HTTP ${error.code}: ${statusMessage(error.body)}` : describe(error)
    }`
  })

const kube = <A>(what: string, call: () => Promise<A>): Effect.Effect<A, ApiserverError> =>
  Effect.tryPromise({ try: call, catch: (error) => kubeError(what, error) })

class AlreadyExists extends Data.TaggedError("AlreadyExists") {}

/** A create call for which "already exists" (409) is success. */
const kubeCreate = (what: string, call: () => Promise<unknown>): Effect.Effect<void, ApiserverError> =>
  Effect.tryPromise({
    try: call,
    catch: (error) => error instanceof ApiException && error.code === 409 ? new AlreadyExists() : kubeError(what, error)
  }).pipe(
    Effect.asVoid,
    Effect.catchTag("AlreadyExists", () => Effect.void)
  )

const statusMessage = (body: unknown): string => {
  try {
    const parsed: unknown = typeof body === "string" ? JSON.parse(body) : body
    if (typeof parsed === "object" && parsed !== null && "message" in parsed && typeof parsed.message === "string") {
      return parsed.message
    }
  } catch {
    // not JSON
  }
  return "(no Status message)"
}

const describe = (error: unknown): string => (error instanceof Error ? error.message : String(error))

const isUnspecified = (address: string): boolean => address === "0.0.0.0" || address === "::"

// Where clients connect: the bind address, or loopback when it binds every interface.
const connectHost = (bindAddress: string): string =>
  bindAddress === "0.0.0.0" ? "127.0.0.1" : bindAddress === "::" ? "::1" : bindAddress

const urlHost = (host: string): string => (Net.isIPv6(host) ? `[${host}]` : host)
