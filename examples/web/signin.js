// Shared by both pages: who are you (?name=Ada, or the form), and a Client signed in with a
// token from /token (the example server plays your backend). Returns null while the form shows.
export async function signIn() {
    const params = new URLSearchParams(location.search);
    const name = params.get('name');
    const room = params.get('room') || undefined;
    if (!name && !params.get('user')) {
        document.querySelector('#signin').hidden = false;
        return null;
    }
    const config = await (await fetch('/config.json')).json();
    const qs = new URLSearchParams({ user: params.get('user') ?? '', name: name ?? '' });
    const { userId, jwt } = await (await fetch(`/token?${qs}`)).json();
    const client = new Appwrite.Client().setEndpoint(config.endpoint).setProject(config.project).setJWT(jwt);
    const { default: presence, createPresence } = await import(config.presenceUrl);
    for (const el of document.querySelectorAll('[data-room]')) el.textContent = room ?? 'everyone';
    return { client, config, userId, name, room, presence, createPresence };
}
