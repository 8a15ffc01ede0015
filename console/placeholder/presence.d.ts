// Placeholder: this build of presenced was configured before clients/web/presence.d.ts existed.
export declare const placeholder: true;
