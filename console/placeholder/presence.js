// Placeholder for the roster helper: this build of presenced was configured before
// clients/web/presence.js existed. Rebuild presenced once it does (the build picks it up).
export const placeholder = true;
throw new Error('presence.js is not in this build of presenced (clients/web/presence.js was missing when it was built)');
