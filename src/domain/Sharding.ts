/**
 * Which replica of the credential controller serves which key, pure.
 *
 * Assignment is rendezvous (highest-random-weight) hashing: every (key, member) pair gets a
 * score from a fixed hash, and the member with the highest score owns the key. Every replica
 * computes the same owner from the same member list, in any order; when a member joins only the
 * keys it now wins move (to it), and when one leaves only its keys move. The hash is this
 * module's own and never changes between versions, so mixed versions agree during a rollout.
 *
 * Membership comes from Leases (one per replica, see `src/controller/Membership.ts`). Views of
 * membership differ between replicas for a moment, so owning a key under one's own view is not
 * enough to reconcile it. Each replica publishes in its Lease the view it has *applied* (after
 * it stopped working on the keys that view takes away), and may run a key only when
 * {@link mayRun}: it owns the key under its own published view, and no other live replica's
 * published view gives the key to that replica. With a fresh read of the others' Leases after
 * each publication, two replicas never run one key at once (see {@link mayRun}).
 *
 * @since 0.1.0
 */
import * as LeaseState from "./LeaseState.ts"

// ---------------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------------

/** FNV-1a over UTF-16 code units from `seed`, then a 32-bit avalanche so near strings spread. */
const hash32 = (text: string, seed: number): number => {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b) >>> 0
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35) >>> 0
  h ^= h >>> 16
  return h >>> 0
}

/**
 * The score of `member` for `key`: a number in `[0, 2^53)`, the same on every machine.
 * The two strings are joined with a separator no Kubernetes name contains.
 *
 * @since 0.1.0
 * @category hashing
 */
export const score = (key: string, member: string): number => {
  const text = `${key}\u0000${member}`
  const high = hash32(text, 0x9e3779b9) & 0x1fffff // 21 bits
  return high * 0x100000000 + hash32(text, 0x7f4a7c15)
}

/**
 * The member that owns `key`: the highest score, ties to the smaller name. Undefined when there
 * are no members. Duplicates and order in `members` do not matter.
 *
 * @since 0.1.0
 * @category assigning
 */
export const owner = (key: string, members: Iterable<string>): string | undefined => {
  let best: string | undefined
  let bestScore = -1
  for (const member of members) {
    const s = score(key, member)
    if (s > bestScore || (s === bestScore && best !== undefined && member < best)) {
      best = member
      bestScore = s
    }
  }
  return best
}

/**
 * Every member's keys (members without keys get an empty list).
 *
 * @since 0.1.0
 * @category assigning
 */
export const assign = (keys: Iterable<string>, members: ReadonlyArray<string>): Map<string, Array<string>> => {
  const result = new Map<string, Array<string>>(members.map((member) => [member, []]))
  for (const key of keys) {
    const to = owner(key, members)
    if (to !== undefined) result.get(to)!.push(key)
  }
  return result
}

// ---------------------------------------------------------------------------------------------
// Membership
// ---------------------------------------------------------------------------------------------

/**
 * One replica's Lease as read.
 *
 * @since 0.1.0
 * @category models
 */
export interface Member {
  readonly identity: string
  readonly spec: LeaseState.LeaseSpec
  /** The view it has applied, from its Lease; undefined when it published none (or an unreadable one). */
  readonly view: ReadonlyArray<string> | undefined
  /** When this replica first saw the Lease's current record, on its own clock (epoch ms). */
  readonly observedAt: number
}

/**
 * The members whose Leases are held and not expired at `now` (see {@link LeaseState.validUntil}:
 * `observedAt + duration`, or the holder's word within `maxClockSkew`). A Lease whose holder is
 * not the member it is named for counts as not held.
 *
 * @since 0.1.0
 * @category membership
 */
export const live = (
  members: ReadonlyArray<Member>,
  now: number,
  maxClockSkew?: number | undefined
): Array<Member> =>
  members.filter((member) => {
    if (LeaseState.holder(member.spec) !== member.identity) return false
    const until = LeaseState.validUntil(member.spec, { observedAt: member.observedAt, maxClockSkew })
    return until !== undefined && now < until
  })

/**
 * A view: member identities, sorted and without duplicates.
 *
 * @since 0.1.0
 * @category membership
 */
export const view = (identities: Iterable<string>): Array<string> => [...new Set(identities)].sort()

/**
 * Whether `member`, by its own published view, claims `key`. A member without a readable view
 * claims every key: it may be running any of them.
 *
 * @since 0.1.0
 * @category membership
 */
export const claims = (key: string, member: Pick<Member, "identity" | "view">): boolean =>
  member.view === undefined || owner(key, member.view) === member.identity

/**
 * Whether `self` may reconcile `key` now: it owns the key under `published` (the view in its own
 * Lease, written after it stopped running the keys that view took away), and none of the
 * `others` (the live members as listed *after* that write) claims the key.
 *
 * Why two replicas never both run a key: if x and y both run k at t, each listed after its last
 * publication and before t, and each claims k from that publication until t. If y's listing
 * came after x's publication, y saw x's claim and would not run; so y listed before x published,
 * and x listed before y published. But each publishes before it lists: a cycle. (Reads must be
 * linearizable: a list without a resourceVersion is.) A member whose Lease expired in the eyes
 * of the others stopped running keys by then: its own Lease time ran out first.
 *
 * @since 0.1.0
 * @category membership
 */
export const mayRun = (
  key: string,
  self: string,
  published: ReadonlyArray<string>,
  others: ReadonlyArray<Pick<Member, "identity" | "view">>
): boolean =>
  owner(key, published) === self && others.every((other) => other.identity === self || !claims(key, other))

// ---------------------------------------------------------------------------------------------
// The view in a Lease annotation
// ---------------------------------------------------------------------------------------------

/**
 * The annotation on a member Lease holding its published view.
 *
 * @since 0.1.0
 * @category membership
 */
export const viewAnnotation = "tether.open-cluster-management.io/shard-view"

const identityPattern = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/

/**
 * The annotation value for a view: identities joined by commas.
 *
 * @since 0.1.0
 * @category membership
 */
export const formatView = (members: ReadonlyArray<string>): string => view(members).join(",")

/**
 * A view from an annotation value; undefined when any identity is not a DNS subdomain name
 * (the member then claims every key: fail closed).
 *
 * @since 0.1.0
 * @category membership
 */
export const parseView = (text: string | undefined): Array<string> | undefined => {
  if (text === undefined) return undefined
  if (text === "") return []
  const parts = text.split(",")
  return parts.every((part) => identityPattern.test(part)) ? view(parts) : undefined
}

/**
 * Whether `identity` can name a member (a DNS subdomain name, as pod names are).
 *
 * @since 0.1.0
 * @category membership
 */
export const isIdentity = (identity: string): boolean => identityPattern.test(identity)
