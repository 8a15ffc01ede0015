// Type declarations for presence.js (the roster helper on the Appwrite web SDK 27.x / 28.x).

/** A raw presence record as the Presences API and Realtime events carry it. */
export interface PresenceRecord {
    $id: string;
    $createdAt?: string;
    $updatedAt?: string;
    $permissions?: string[];
    userId: string;
    status?: string | null;
    source?: string;
    expiresAt?: string | null;
    metadata?: Record<string, unknown> | null;
}

/** One person in the roster. */
export interface PresenceEntry {
    /** The person's user ID. */
    readonly userId: string;
    /** Their current status label. */
    readonly status: string | null;
    /** Details attached with set(), plus `name` (null when unknown) and `color`. */
    readonly metadata: Readonly<{ name: string | null; color: string; [key: string]: unknown }>;
    /** A colour for this person, stable across pages and sessions (metadata.color wins when set). */
    readonly color: string;
    /** Time of their most recent update, in ms since the epoch. */
    readonly lastSeen: number | null;
    /** When the status expires if not refreshed. */
    readonly expiresAt: string | null;
    /** The presence record's $id. */
    readonly presenceId: string;
    /** The record's $createdAt (the roster is sorted by it). */
    readonly createdAt: string | null;
}

export interface StartOptions {
    /** Turn away while the tab is hidden and back when shown (visibilitychange). Default true. */
    auto?: boolean;
    /** The status published when tracking begins. Default "online". */
    status?: string;
    /** How often the status is re-sent, in ms. Default 25000. */
    heartbeatMs?: number;
    /** Details to publish with the status (name and room are added). */
    metadata?: Record<string, unknown>;
}

export interface PresenceOptions extends StartOptions {
    /** The Appwrite SDK namespace (needs Realtime and Presences). Default globalThis.Appwrite. */
    sdk?: { Realtime: new (client: any) => any; Presences: new (client: any) => any; Account?: new (client: any) => any };
    /** An existing Realtime instance to share (it is then not disconnected by stop()). */
    realtime?: any;
    /** Only people in this room (metadata.room) are listed, and we publish into it. */
    room?: string;
    /** Our user ID. Default: the JWT's userId/sub claim, else account.get(). */
    userId?: string;
    /** Our name (metadata.name). Default: the JWT's name claim, else the account's name, else null. */
    name?: string | null;
    /** Roles that may read our presence. Default ["users"]. */
    read?: string[];
    /** For tests: the document whose visibility drives `auto`. Default globalThis.document. */
    document?: EventTarget & { visibilityState: string };
    /** The Appwrite Client (Alpine plugin options only). */
    client?: any;
}

/** The roster and our own presence. Dispatches "change" events; see also onChange(). */
export declare class Presence extends EventTarget {
    constructor(client: any, options?: PresenceOptions);
    /** Everyone currently present, ourselves included. */
    readonly list: readonly PresenceEntry[];
    /** The same people keyed by user ID. */
    readonly records: Readonly<Record<string, PresenceEntry>>;
    /** Our own current status, or null when not publishing. */
    readonly me: string | null;
    /** True once tracking has started and the roster has loaded. */
    readonly ready: boolean;
    /** The most recent error message, or null. */
    readonly error: string | null;
    /** Our user ID once started. */
    readonly userId: string | null;
    /** Begin tracking. Resolves when the roster has loaded (or failed: see error). */
    start(options?: StartOptions): Promise<void>;
    /** Publish a status label with optional details (replacing previous details; name and room kept). */
    set(status: string, metadata?: Record<string, unknown>): void;
    /** One person's entry, or null when absent. */
    of(userId: string): PresenceEntry | null;
    /** The roster (same as list). */
    all(): readonly PresenceEntry[];
    /** Remove our own status, keep watching the others. */
    clear(): Promise<void>;
    /** Stop tracking and disconnect. */
    stop(): Promise<void>;
    /** Call fn after every change; returns a function that removes it. */
    onChange(fn: (presence: Presence) => void): () => void;
}

export declare function createPresence(client: any, options?: PresenceOptions): Presence;

/** A stable colour for a user ID (an hsl() string). */
export declare function colorFor(userId: string): string;

/** Presence records (a list result) -> roster entries, one per user (the newest record of each). */
export declare function rosterOf(records: PresenceRecord[]): readonly PresenceEntry[];

/** The pure reconciliation of list snapshots and realtime events. Methods return true when the roster changed. */
export interface Roster {
    readonly list: readonly PresenceEntry[];
    readonly records: Readonly<Record<string, PresenceEntry>>;
    readonly ready: boolean;
    of(userId: string): PresenceEntry | null;
    applyEvent(event: { events?: string[]; action?: 'upsert' | 'update' | 'delete'; payload: PresenceRecord }): boolean;
    beginSnapshot(): number;
    applySnapshot(mark: number, records: PresenceRecord[]): boolean;
    forget(record: PresenceRecord): boolean;
    reset(): void;
}
export declare function createRoster(options?: { match?: (record: PresenceRecord) => boolean }): Roster;

/** The $presence magic (Alpine.js). */
export interface PresenceMagic {
    readonly list: readonly PresenceEntry[];
    readonly records: Readonly<Record<string, PresenceEntry>>;
    readonly me: string | null;
    readonly ready: boolean;
    readonly error: string | null;
    readonly controller: Presence;
    start(options?: StartOptions & PresenceOptions): Promise<void>;
    set(status: string, metadata?: Record<string, unknown>): void;
    of(userId: string): PresenceEntry | null;
    all(): readonly PresenceEntry[];
    clear(): Promise<void> | undefined;
    stop(): Promise<void> | undefined;
}

/** The Alpine.js plugin: Alpine.plugin(presence.configure(client, options)). */
export declare function presence(Alpine: any): void;
export declare namespace presence {
    let client: any;
    let options: PresenceOptions;
    function configure(client: any, options?: PresenceOptions): typeof presence;
}
export default presence;
