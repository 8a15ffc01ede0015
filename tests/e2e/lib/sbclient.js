'use strict';
// realtime-js clients (Supabase's, unmodified, on the `ws` transport) for the tests: placed on a
// chosen gateway, a channel's presence callbacks recorded, a subscribe awaited.
const WS = require('ws');
const { RealtimeClient } = require('@supabase/realtime-js');
const R = require('./rtclient');

// A connected RealtimeClient on gateway `pid` of cluster (any gateway when pid is undefined):
// reconnected until the kernel's SO_REUSEPORT puts it there. Options: vsn (default 2.0.0),
// heartbeatIntervalMs (default 5000), and `into`, an array the client is pushed to (to close
// it after the test).
async function sbClient(cluster, apikey, pid, opts = {}) {
    for (let i = 0; i < 100; i++) {
        const rc = new RealtimeClient(`ws://127.0.0.1:${cluster.port}/realtime/v1`, {
            params: { apikey }, transport: WS, vsn: opts.vsn ?? '2.0.0',
            heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 5000,
        });
        rc.connect();
        try {
            await R.until(() => rc.isConnected(), 5000, 'realtime-js connected');
        } catch (e) {
            rc.disconnect(); // (else it reconnects forever, and keeps the test process alive)
            throw e;
        }
        const sock = rc.socketAdapter.socket.conn._socket;
        if (pid === undefined || (await R.gatewayOf(cluster, sock.localPort)) === pid) {
            if (opts.into) opts.into.push(rc);
            return rc;
        }
        rc.disconnect();
    }
    throw new Error(`no client on gateway ${pid}`);
}

// Records a channel's presence callbacks (before it subscribes).
function sbWatch(ch) {
    const ev = [];
    ch.on('presence', { event: 'sync' }, () => ev.push({ t: 'sync', state: JSON.parse(JSON.stringify(ch.presenceState())) }))
        .on('presence', { event: 'join' }, (e) => ev.push({ t: 'join', key: e.key, metas: e.newPresences }))
        .on('presence', { event: 'leave' }, (e) => ev.push({ t: 'leave', key: e.key, metas: e.leftPresences }));
    return ev;
}

function sbSubscribe(ch) {
    return new Promise((resolve, reject) => {
        ch.subscribe((status, err) => {
            if (status === 'SUBSCRIBED') resolve(status);
            else reject(new Error(`${status}: ${err && err.message}`));
        });
    });
}

module.exports = { sbClient, sbWatch, sbSubscribe };
