/**
 * The object versions a controller wrote itself, so that the watch events its own writes cause
 * can be told apart from changes made by someone else.
 *
 * A version is identified by uid and resourceVersion together: a resourceVersion is only unique
 * within one etcd, and a controller may write to several clusters (the hub's add-on and the
 * hosting cluster's Secrets come from different ones). Only the newest few are kept: the event of
 * a write follows it closely.
 */

/** @category models */
export type Versioned = {
  readonly metadata?: { readonly uid?: string | undefined; readonly resourceVersion?: string | undefined } | undefined
}

/** @category models */
export interface OwnWrites {
  /** Remember an object as written by us (ignored without a resourceVersion). */
  readonly add: (object: Versioned | undefined) => void
  /** Whether this exact version of the object is one we wrote. */
  readonly has: (object: Versioned) => boolean
}

const keyOf = (object: Versioned | undefined): string | undefined => {
  const version = object?.metadata?.resourceVersion
  return version === undefined ? undefined : `${object?.metadata?.uid ?? ""}@${version}`
}

/** @category constructors */
export const make = (capacity = 32): OwnWrites => {
  const versions: Array<string> = []
  return {
    add: (object) => {
      const key = keyOf(object)
      if (key === undefined) return
      versions.push(key)
      if (versions.length > capacity) versions.shift()
    },
    has: (object) => {
      const key = keyOf(object)
      return key !== undefined && versions.includes(key)
    }
  }
}
