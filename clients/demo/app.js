// The roomcast demo chat: plain JavaScript on top of the client module.
//
// Pick a name and a room, chat, see who is present. The display name travels
// in each message's data ({name, text, at}); presence lists user ids, named
// once they have said something. The connection state is shown at the top;
// messages replayed after a reconnect carry a "recovered" tag.
//
// Tokens: by default the demo connects anonymously. Opened as
// /demo/?token_url=/some/path, it asks that path of its own origin for a
// token (GET, the page's cookies; the answer is the JWT as text, or JSON
// {"token": …}) before every connection and before the token expires, and
// shows the expiry and each refresh. The gateway serves no such path: an
// application puts its own token endpoint on the page's origin (a reverse
// proxy in front of both). Another origin is refused, so a link cannot make
// the page fetch tokens from elsewhere.

import { RoomcastClient } from './roomcast.js';

const $ = (id) => document.getElementById(id);

const ui = {
  status: $('status'),
  statusText: $('status-text'),
  joinView: $('join-view'),
  joinForm: $('join-form'),
  joinButton: $('join'),
  joinError: $('join-error'),
  name: $('name'),
  room: $('room'),
  chatView: $('chat-view'),
  roomName: $('room-name'),
  me: $('me'),
  leave: $('leave'),
  messages: $('messages'),
  composer: $('composer'),
  text: $('text'),
  send: $('send'),
  members: $('members'),
  count: $('count'),
  facts: {
    state: $('fact-state'),
    node: $('fact-node'),
    session: $('fact-session'),
    position: $('fact-position'),
    reconnects: $('fact-reconnects'),
    token: $('fact-token'),
  },
};

/** The same-origin token path from ?token_url=…, or null (anonymous). */
let tokenUrl = null;

/** The running chat, or null on the join screen. */
let chat = null;

const STATE_TEXT = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  disconnected: 'not connected',
};

function short(id) {
  return id.length > 14 ? `${id.slice(0, 13)}…` : id;
}

function timeOf(at) {
  const date = typeof at === 'number' ? new Date(at) : new Date();
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- the list ---------------------------------------------------------------

function nearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function append(node) {
  const stick = nearBottom();
  ui.messages.append(node);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function notice(text, kind = 'info') {
  const item = el('li', `notice notice-${kind}`);
  item.append(el('span', 'notice-text', text));
  append(item);
  return item;
}

function showMessage(message) {
  const data = message.data && typeof message.data === 'object' ? message.data : { text: String(message.data) };
  const user = message.from?.user;
  const name = typeof data.name === 'string' && data.name ? data.name : user ? short(user) : 'backend';
  if (user && typeof data.name === 'string' && data.name) chat.names.set(user, data.name);
  const mine = user !== undefined && user === chat.client.session?.user;

  const item = el('li', 'msg');
  item.dataset.key = `${message.epoch}:${message.offset}`;
  item.dataset.offset = String(message.offset);
  if (mine) item.classList.add('mine');
  if (message.replayed) item.classList.add('recovered');

  const head = el('div', 'msg-head');
  head.append(el('span', 'author', name));
  head.append(el('span', 'time', timeOf(data.at)));
  if (message.replayed) head.append(el('span', 'tag', 'recovered'));
  item.append(head);
  item.append(el('div', 'msg-text', typeof data.text === 'string' ? data.text : JSON.stringify(data)));
  item.title = `offset ${message.offset} · epoch ${message.epoch}`;
  append(item);

  if (message.replayed && chat.recoveredNotice) {
    chat.recovered += 1;
    chat.recoveredNotice.querySelector('.notice-text').textContent =
      `Reconnected, session resumed: ${chat.recovered} missed message${chat.recovered === 1 ? '' : 's'} recovered.`;
  }
  renderMembers();
  renderFacts();
}

// ---- presence ---------------------------------------------------------------

function renderMembers() {
  if (!chat) return;
  const me = chat.client.session?.user ?? chat.lastUser;
  const users = new Map(); // user -> sessions
  for (const [session, user] of chat.members) {
    if (!users.has(user)) users.set(user, []);
    users.get(user).push(session);
  }
  const sorted = [...users.keys()].sort((a, b) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
  ui.members.replaceChildren(
    ...sorted.map((user) => {
      const item = el('li', user === me ? 'member you' : 'member');
      item.dataset.user = user;
      const name = user === me ? chat.name : chat.names.get(user);
      const avatar = el('span', 'avatar', (name || user.replace(/^anon-/, '')).slice(0, 1).toUpperCase());
      avatar.style.setProperty('--hue', String(hue(user)));
      const label = el('span', 'member-label');
      label.append(el('span', 'member-name', name ? (user === me ? `${name} (you)` : name) : 'anonymous'));
      label.append(el('code', 'member-id', short(user)));
      item.title = user;
      item.append(avatar, label);
      return item;
    }),
  );
  ui.count.textContent = String(sorted.length);
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

async function refreshPresence() {
  const current = chat;
  try {
    const members = await current.client.presence(current.room);
    if (chat !== current) return;
    current.members = new Map(members.map((m) => [m.session, m.user]));
    renderMembers();
  } catch {
    // Disconnected meanwhile: the next connection refreshes it again.
  }
}

// ---- connection state -----------------------------------------------------------

function setStatus(info) {
  ui.status.dataset.state = info.state;
  let text = STATE_TEXT[info.state];
  if (info.state === 'reconnecting') {
    text = `reconnecting in ${(info.delay / 1000).toFixed(1)} s…`;
  } else if (info.state === 'connecting' && info.attempt > 1) {
    text = `connecting (attempt ${info.attempt})…`;
  } else if (info.state === 'disconnected' && info.error) {
    text = `disconnected: ${info.error.message}`;
  }
  ui.statusText.textContent = text;
  const connected = info.state === 'connected';
  ui.send.disabled = !connected;
  ui.text.placeholder = connected ? 'Write a message…' : 'Waiting for the connection…';
  renderFacts();
}

function renderFacts() {
  if (!chat) return;
  const session = chat.client.session;
  ui.facts.state.textContent = chat.client.state;
  ui.facts.node.textContent = session?.node ?? '–';
  ui.facts.session.textContent = session ? short(session.session) : '–';
  const pos = chat.client.position(chat.room);
  ui.facts.position.textContent = pos ? `offset ${pos.offset} · epoch ${pos.epoch.slice(0, 8)}` : '–';
  ui.facts.reconnects.textContent = String(chat.reconnects);
  ui.facts.token.textContent = tokenFact();
}

function secondsLeft(expiresAt) {
  return Math.max(0, Math.round(expiresAt - Date.now() / 1000));
}

function tokenFact() {
  if (!tokenUrl) return 'anonymous';
  const expiresAt = chat.client.tokenExpiresAt;
  if (expiresAt == null) return chat.client.state === 'connected' ? 'no expiry' : '–';
  return `expires in ${secondsLeft(expiresAt)} s`;
}

/** Asks the page's origin for a token (see the top of this file). */
async function fetchToken() {
  const response = await fetch(tokenUrl, { credentials: 'same-origin', cache: 'no-store' });
  if (!response.ok) throw new Error(`token endpoint answered HTTP ${response.status}`);
  const text = (await response.text()).trim();
  if (text.startsWith('{')) {
    const token = JSON.parse(text).token;
    if (typeof token !== 'string' || !token) throw new Error('token endpoint answered no token');
    return token;
  }
  return text;
}

function onState(info) {
  setStatus(info);
  if (!chat) return;
  if (info.state === 'connected') {
    chat.lastUser = info.session.user;
    chat.names.set(info.session.user, chat.name);
  }
  if (!chat.joined) return; // still on the join screen: the status pill says it all
  if (info.state === 'reconnecting' && !chat.down) {
    chat.down = true;
    chat.recoveredNotice = null;
    notice(`Connection lost (${info.cause.message}). Reconnecting…`, 'warn');
  } else if (info.state === 'connected') {
    if (chat.down) {
      chat.down = false;
      chat.reconnects += 1;
      if (info.resumed) {
        chat.recovered = 0;
        chat.recoveredNotice = notice('Reconnected, session resumed: no message was missed.', 'ok');
      } else {
        chat.recoveredNotice = null;
        notice('Reconnected with a new session; the room was joined again.', 'ok');
      }
    }
    // The client has already sent its re-joins: this request comes after them.
    refreshPresence();
  } else if (info.state === 'disconnected' && info.error) {
    notice(`Disconnected: ${info.error.message}`, 'error');
  }
}

// ---- join, chat, leave ----------------------------------------------------------

async function joinRoom(name, room) {
  ui.joinButton.disabled = true;
  ui.joinError.hidden = true;
  const options = { backoff: { base: 250, cap: 5000 } };
  if (tokenUrl) options.getToken = fetchToken;
  const client = new RoomcastClient(options);
  chat = {
    client,
    name,
    room,
    members: new Map(), // session -> user
    names: new Map(), // user -> display name
    down: false,
    reconnects: 0,
    recovered: 0,
    recoveredNotice: null,
    lastUser: null,
    joined: false,
  };
  window.roomcastDemo = { client, chat };
  client.on('state', onState);
  client.on('message', (m) => {
    if (m.room === room) showMessage(m);
  });
  client.on('presence_join', ({ room: r, member }) => {
    if (r !== room) return;
    chat.members.set(member.session, member.user);
    renderMembers();
  });
  client.on('presence_leave', ({ room: r, member }) => {
    if (r !== room) return;
    chat.members.delete(member.session);
    renderMembers();
  });
  client.on('recovery_failed', ({ room: r }) => {
    if (r !== room) return;
    notice('The node lost this room’s history (it restarted): messages sent while you were away cannot be recovered.', 'warn');
    renderFacts();
  });
  client.on('rejoin_failed', ({ room: r, error }) => {
    if (r === room) notice(`Could not join the room again: ${error.message}`, 'error');
  });
  client.on('token_refreshed', ({ expiresAt }) => {
    if (!chat?.joined) return;
    notice(expiresAt == null ? 'Token refreshed.' : `Token refreshed, expires in ${secondsLeft(expiresAt)} s.`, 'ok');
    renderFacts();
  });
  client.on('token_refresh_failed', ({ error, final }) => {
    if (!chat?.joined) return;
    notice(
      `Token refresh failed (${error.message})${final ? '; the connection will be renewed at expiry.' : ', trying again.'}`,
      'warn',
    );
  });
  client.on('left', ({ room: r, reason }) => {
    if (r === room) notice(`You were taken out of #${room} (${reason ?? 'by the node'}).`, 'error');
  });
  ui.messages.replaceChildren();
  try {
    await client.connect();
    await client.join(room, { presence: true });
  } catch (error) {
    client.close();
    chat = null;
    ui.joinError.textContent = `Could not join: ${error.message}`;
    ui.joinError.hidden = false;
    ui.joinButton.disabled = false;
    return;
  }
  chat.joined = true;
  ui.joinButton.disabled = false;
  ui.roomName.textContent = room;
  ui.me.textContent = `as ${name}`;
  notice(`You joined #${room}. Messages appear here as the node delivers them.`);
  ui.joinView.hidden = true;
  ui.chatView.hidden = false;
  document.title = `#${room} · roomcast demo`;
  renderFacts();
  await refreshPresence();
  ui.text.focus();
}

async function publish(text) {
  const current = chat;
  try {
    await current.client.publish(current.room, { name: current.name, text, at: Date.now() });
  } catch (error) {
    if (chat !== current) return;
    notice(`Not sent (${error.code}): “${text}”`, 'error');
    if (!ui.text.value) ui.text.value = text;
  }
}

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  const room = ui.room.value.trim();
  if (!name || !room) return;
  try {
    localStorage.setItem('roomcast-demo', JSON.stringify({ name, room }));
  } catch {
    // Storage may be unavailable; remembering is only a convenience.
  }
  joinRoom(name, room);
});

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !chat || chat.client.state !== 'connected') return;
  ui.text.value = '';
  publish(text);
});

ui.leave.addEventListener('click', async () => {
  const current = chat;
  chat = null;
  ui.chatView.hidden = true;
  ui.joinView.hidden = false;
  document.title = 'roomcast demo';
  if (current) await current.client.close();
  setStatus({ state: 'disconnected', error: null });
});

// The token countdown.
setInterval(() => {
  if (chat && tokenUrl) ui.facts.token.textContent = tokenFact();
}, 1000);

// Prefill from ?name=…&room=… or the last visit; ?token_url=… (same origin only).
(() => {
  const params = new URLSearchParams(location.search);
  const asked = params.get('token_url');
  if (asked) {
    let url = null;
    try {
      url = new URL(asked, location.href);
    } catch {
      url = null;
    }
    if (url && url.origin === location.origin) {
      tokenUrl = url.href;
    } else {
      ui.joinError.textContent = `Ignored token_url ${asked}: only a path of this page's origin is used.`;
      ui.joinError.hidden = false;
    }
  }
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem('roomcast-demo') || '{}');
  } catch {
    saved = {};
  }
  ui.name.value = params.get('name') || saved.name || '';
  ui.room.value = params.get('room') || saved.room || 'lobby';
  (ui.name.value ? ui.room : ui.name).focus();
})();
