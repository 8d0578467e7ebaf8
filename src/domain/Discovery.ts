/**
 * Which (managed cluster, add-on) pairs the credential controller serves, and for each where
 * the credential comes from and where it goes, pure.
 *
 * With a hub, a pair is a ManagedClusterAddOn (namespace = the managed cluster, name = the
 * add-on) annotated `addon.open-cluster-management.io/hosting-cluster-name=<this hosting
 * cluster>`. Without a hub, a pair comes from a source Secret on the hosting cluster selected by
 * `--source-secret-selector`. Either way, per pair:
 * - the ServiceAccount to mint tokens for, on the managed cluster: named like the add-on, in
 *   the add-on's install namespace;
 * - the source kubeconfig of the managed cluster, on the hosting cluster. Two conventions exist
 *   (hosted-mode-spec §10): cluster-proxy's `<cluster>/external-managed-kubeconfig`, and the hosted
 *   klusterlet's own copy in its agent namespace (named like the Klusterlet,
 *   `klusterlet-<cluster>` by default). Both are candidates, in that order; the controller uses
 *   the first that exists. An annotation pins one;
 * - the generated Secret on the hosting cluster: `<addon>-managed-kubeconfig` in the add-on's
 *   install namespace (the name the add-on framework gives the add-on as
 *   `managedKubeConfigSecret`).
 * Every default can be overridden by an annotation ({@link annotations}), on the
 * ManagedClusterAddOn or on the source Secret in hubless mode.
 *
 * One bad object never affects the others: each problem is reported for its own pair, and two
 * pairs that would write the same Secret are both refused (never one overwriting the other's
 * credential).
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** The add-on framework's annotation that puts an add-on in hosted mode. @category constants */
export const hostingClusterAnnotation = "addon.open-cluster-management.io/hosting-cluster-name"

/** The install namespace the add-on framework uses when the add-on names none. @category constants */
export const defaultInstallNamespace = "open-cluster-management-agent-addon"

/** The source Secret's name in both conventions. @category constants */
export const externalManagedKubeconfig = "external-managed-kubeconfig"

const prefix = "credentials.tether.open-cluster-management.io"

/**
 * Override annotations, read from the ManagedClusterAddOn (hub mode) or the source Secret
 * (hubless mode).
 *
 * @category constants
 */
export const annotations = {
  /** Namespace of the ServiceAccount on the managed cluster (default: the install namespace). */
  serviceAccountNamespace: `${prefix}/service-account-namespace`,
  /** Name of the ServiceAccount (default: the add-on's name). */
  serviceAccountName: `${prefix}/service-account-name`,
  /** Namespace of the source Secret on the hosting cluster; pins the source (no fallback). */
  sourceNamespace: `${prefix}/source-namespace`,
  /** Name of the source Secret (default `external-managed-kubeconfig`). */
  sourceName: `${prefix}/source-name`,
  /** The hosted Klusterlet's name = its agent namespace (default `klusterlet-<cluster>`). */
  klusterletName: `${prefix}/klusterlet-name`,
  /** Namespace of the generated Secret on the hosting cluster (default: the install namespace). */
  targetNamespace: `${prefix}/target-namespace`,
  /** Name of the generated Secret (default `<addon>-managed-kubeconfig`). */
  targetName: `${prefix}/target-name`,
  /** Hubless mode: the managed cluster (default: the source Secret's namespace). */
  clusterName: `${prefix}/cluster-name`,
  /** Hubless mode: the add-ons served from this source, comma-separated (default: `--addons`). */
  addons: `${prefix}/addons`,
  /** Hubless mode: the add-ons' install namespace (default `open-cluster-management-agent-addon`). */
  installNamespace: `${prefix}/install-namespace`
} as const

/** @category models */
export interface ObjectRef {
  readonly namespace: string
  readonly name: string
}

/**
 * One (managed cluster, add-on) pair and where its credential comes from and goes.
 *
 * @category models
 */
export interface Pair {
  /** `<cluster>/<addon>`: the work-queue and sharding key; safe to log. */
  readonly key: string
  readonly cluster: string
  readonly addon: string
  /** On the managed cluster. */
  readonly serviceAccount: ObjectRef
  /** On the hosting cluster, in order of preference; the first that exists is used. */
  readonly sources: ReadonlyArray<ObjectRef>
  /** On the hosting cluster. */
  readonly target: ObjectRef
  /** The ManagedClusterAddOn on the hub (hub mode), for its condition and relatedObjects. */
  readonly addonObject: (ObjectRef & { readonly uid: string | undefined }) | undefined
  /** The add-on is being deleted: remove the generated Secret instead of refreshing it. */
  readonly deleting: boolean
}

/** Why a pair cannot be served. @category errors */
export type Reason = "InvalidName" | "InvalidOverride" | "TargetConflict"

/** @category errors */
export class DiscoveryError extends Schema.TaggedError<DiscoveryError>()("DiscoveryError", {
  /** The pair's key, or the object that could not become one. */
  subject: Schema.String,
  reason: Schema.Literals(["InvalidName", "InvalidOverride", "TargetConflict"]),
  message: Schema.String
}) {}

/**
 * What a discovery pass found: the pairs to serve and, separately, what could not be served.
 *
 * @category models
 */
export interface Discovered {
  readonly pairs: ReadonlyArray<Pair>
  readonly problems: ReadonlyArray<DiscoveryError>
}

/** The fields of a ManagedClusterAddOn discovery reads. @category models */
export interface AddonObject {
  readonly metadata?: {
    readonly namespace?: string | undefined
    readonly name?: string | undefined
    readonly uid?: string | undefined
    readonly annotations?: Readonly<Record<string, string>> | undefined
    readonly deletionTimestamp?: unknown
  } | undefined
  readonly spec?: { readonly installNamespace?: unknown } | undefined
}

/** The fields of a source Secret hubless discovery reads. @category models */
export interface SourceSecret {
  readonly metadata?: {
    readonly namespace?: string | undefined
    readonly name?: string | undefined
    readonly annotations?: Readonly<Record<string, string>> | undefined
    readonly deletionTimestamp?: unknown
  } | undefined
}

/** @category models */
export interface HubConfig {
  /** This hosting cluster's name on the hub. */
  readonly hostingClusterName: string
  /** Serve only these add-ons; every add-on when undefined. */
  readonly addons?: ReadonlyArray<string> | undefined
}

/** @category models */
export interface HublessConfig {
  /** The add-ons a source serves when it does not say. */
  readonly addons: ReadonlyArray<string>
}

// A DNS-1123 label (namespaces, and cluster and add-on names, which are namespaces and object
// names on the hub) and a DNS-1123 subdomain (Secret and ServiceAccount names).
const label = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/
const subdomain = /^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$/

/** Whether `name` can be a namespace. @category validating */
export const isNamespace = (name: string): boolean => label.test(name)

/** Whether `name` can be a Secret or ServiceAccount name. @category validating */
export const isObjectName = (name: string): boolean => subdomain.test(name) && name.split(".").every((p) => label.test(p))

type Read = { readonly ok: true; readonly value: string } | { readonly ok: false; readonly error: DiscoveryError }

const override = (
  subject: string,
  given: Readonly<Record<string, string>>,
  key: string,
  fallback: string,
  kind: "namespace" | "name"
): Read => {
  const raw = Object.hasOwn(given, key) ? given[key]! : undefined
  const value = raw === undefined ? fallback : raw.trim()
  const valid = kind === "namespace" ? isNamespace(value) : isObjectName(value)
  if (valid) return { ok: true, value }
  return {
    ok: false,
    error: raw === undefined
      ? new DiscoveryError({ subject, reason: "InvalidName", message: `${subject}: the default ${kind} is not a valid Kubernetes ${kind}` })
      : new DiscoveryError({
        subject,
        reason: "InvalidOverride",
        message: `${subject}: annotation ${key} is not a valid Kubernetes ${kind}`
      })
  }
}

/**
 * The pair for `addon` of `cluster` with `given` overrides. Names must be valid: an override
 * that is not is an error for this pair only.
 */
const pairFor = (
  cluster: string,
  addon: string,
  installNamespace: string,
  given: Readonly<Record<string, string>>,
  extra: Pick<Pair, "addonObject" | "deleting">,
  pinnedSource?: ObjectRef
): { readonly pair: Pair } | { readonly error: DiscoveryError } => {
  const key = `${cluster}/${addon}`
  if (!isNamespace(cluster) || !isNamespace(addon)) {
    return { error: new DiscoveryError({ subject: key, reason: "InvalidName", message: `${key}: the cluster and add-on names must be DNS labels` }) }
  }
  const reads = {
    saNamespace: override(key, given, annotations.serviceAccountNamespace, installNamespace, "namespace"),
    saName: override(key, given, annotations.serviceAccountName, addon, "name"),
    targetNamespace: override(key, given, annotations.targetNamespace, installNamespace, "namespace"),
    targetName: override(key, given, annotations.targetName, `${addon}-managed-kubeconfig`, "name"),
    sourceName: override(key, given, annotations.sourceName, externalManagedKubeconfig, "name"),
    klusterlet: override(key, given, annotations.klusterletName, `klusterlet-${cluster}`, "namespace")
  }
  for (const read of Object.values(reads)) if (!read.ok) return { error: read.error }
  const value = (read: Read) => (read as { readonly value: string }).value
  const sourceName = value(reads.sourceName)
  let sources: Array<ObjectRef>
  if (pinnedSource !== undefined) sources = [pinnedSource]
  else if (Object.hasOwn(given, annotations.sourceNamespace)) {
    const namespace = override(key, given, annotations.sourceNamespace, cluster, "namespace")
    if (!namespace.ok) return { error: namespace.error }
    sources = [{ namespace: namespace.value, name: sourceName }]
  } else if (Object.hasOwn(given, annotations.klusterletName)) {
    sources = [{ namespace: value(reads.klusterlet), name: sourceName }]
  } else {
    sources = [{ namespace: cluster, name: sourceName }, { namespace: value(reads.klusterlet), name: sourceName }]
  }
  return {
    pair: {
      key,
      cluster,
      addon,
      serviceAccount: { namespace: value(reads.saNamespace), name: value(reads.saName) },
      sources,
      target: { namespace: value(reads.targetNamespace), name: value(reads.targetName) },
      ...extra
    }
  }
}

/**
 * Refuse every pair whose target Secret another pair also writes, or that is another pair's
 * source: both get a `TargetConflict` problem.
 */
const withoutConflicts = (found: ReadonlyArray<Pair>, problems: Array<DiscoveryError>): Array<Pair> => {
  const ref = (r: ObjectRef) => `${r.namespace}/${r.name}`
  const writers = new Map<string, Array<string>>()
  for (const pair of found) writers.set(ref(pair.target), [...(writers.get(ref(pair.target)) ?? []), pair.key])
  const sources = new Set(found.flatMap((pair) => pair.sources.map(ref)))
  return found.filter((pair) => {
    const target = ref(pair.target)
    const others = (writers.get(target) ?? []).filter((key) => key !== pair.key)
    if (others.length > 0) {
      problems.push(
        new DiscoveryError({
          subject: pair.key,
          reason: "TargetConflict",
          message: `${pair.key}: the generated Secret ${target} would also be written for ${others.join(", ")}; set ${annotations.targetNamespace} or ${annotations.targetName}`
        })
      )
      return false
    }
    if (sources.has(target)) {
      problems.push(
        new DiscoveryError({
          subject: pair.key,
          reason: "TargetConflict",
          message: `${pair.key}: the generated Secret ${target} is a source kubeconfig; it would be overwritten`
        })
      )
      return false
    }
    return true
  })
}

const sortByKey = (pairs: Array<Pair>) => pairs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))

/**
 * The pairs of the ManagedClusterAddOns hosted on `config.hostingClusterName`; add-ons hosted
 * elsewhere, or not hosted, are not ours and are skipped without a problem.
 *
 * @category discovering
 */
export const fromHub = (addons: ReadonlyArray<AddonObject>, config: HubConfig): Discovered => {
  const problems: Array<DiscoveryError> = []
  const found: Array<Pair> = []
  const wanted = config.addons === undefined ? undefined : new Set(config.addons)
  for (const object of addons) {
    const metadata = object.metadata ?? {}
    const given = metadata.annotations ?? {}
    if (!Object.hasOwn(given, hostingClusterAnnotation) || given[hostingClusterAnnotation] !== config.hostingClusterName) continue
    const cluster = metadata.namespace ?? ""
    const addon = metadata.name ?? ""
    if (wanted !== undefined && !wanted.has(addon)) continue
    const install = object.spec?.installNamespace
    const installNamespace = typeof install === "string" && install !== "" ? install : defaultInstallNamespace
    if (!isNamespace(installNamespace)) {
      problems.push(new DiscoveryError({ subject: `${cluster}/${addon}`, reason: "InvalidName", message: `${cluster}/${addon}: spec.installNamespace is not a valid namespace` }))
      continue
    }
    const result = pairFor(cluster, addon, installNamespace, given, {
      addonObject: { namespace: cluster, name: addon, uid: metadata.uid },
      deleting: metadata.deletionTimestamp !== undefined && metadata.deletionTimestamp !== null
    })
    if ("error" in result) problems.push(result.error)
    else found.push(result.pair)
  }
  return { pairs: sortByKey(withoutConflicts(found, problems)), problems }
}

/**
 * The pairs of source Secrets (already selected by `--source-secret-selector`): each serves
 * the add-ons it names (or `config.addons`) for the cluster it names (or its namespace), from
 * itself; a source being deleted makes its pairs `deleting`.
 *
 * @category discovering
 */
export const fromSources = (secrets: ReadonlyArray<SourceSecret>, config: HublessConfig): Discovered => {
  const problems: Array<DiscoveryError> = []
  const found: Array<Pair> = []
  for (const secret of secrets) {
    const metadata = secret.metadata ?? {}
    const given = metadata.annotations ?? {}
    const source = { namespace: metadata.namespace ?? "", name: metadata.name ?? "" }
    const subject = `secret ${source.namespace}/${source.name}`
    const cluster = Object.hasOwn(given, annotations.clusterName) ? given[annotations.clusterName]!.trim() : source.namespace
    const addons = Object.hasOwn(given, annotations.addons)
      ? given[annotations.addons]!.split(",").map((a) => a.trim()).filter((a) => a !== "")
      : config.addons
    const install = Object.hasOwn(given, annotations.installNamespace) ? given[annotations.installNamespace]!.trim() : defaultInstallNamespace
    if (!isNamespace(install)) {
      problems.push(new DiscoveryError({ subject, reason: "InvalidOverride", message: `${subject}: annotation ${annotations.installNamespace} is not a valid namespace` }))
      continue
    }
    if (addons.length === 0) {
      problems.push(new DiscoveryError({ subject, reason: "InvalidOverride", message: `${subject}: annotation ${annotations.addons} names no add-on` }))
      continue
    }
    for (const addon of new Set(addons)) {
      const result = pairFor(cluster, addon, install, given, {
        addonObject: undefined,
        deleting: metadata.deletionTimestamp !== undefined && metadata.deletionTimestamp !== null
      }, source)
      if ("error" in result) problems.push(result.error)
      else found.push(result.pair)
    }
  }
  // Two sources for one pair: neither is trusted over the other.
  const byKey = new Map<string, Array<Pair>>()
  for (const pair of found) byKey.set(pair.key, [...(byKey.get(pair.key) ?? []), pair])
  const unique = found.filter((pair) => {
    const same = byKey.get(pair.key)!
    if (same.length === 1) return true
    if (same[0] === pair) {
      problems.push(
        new DiscoveryError({
          subject: pair.key,
          reason: "TargetConflict",
          message: `${pair.key}: ${same.length} source Secrets name this pair (${same.map((p) => `${p.sources[0]!.namespace}/${p.sources[0]!.name}`).join(", ")})`
        })
      )
    }
    return false
  })
  return { pairs: sortByKey(withoutConflicts(unique, problems)), problems }
}
