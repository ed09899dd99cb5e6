// The roomcast admin page: plain JavaScript, no build step, no dependency.
//
// It talks only to the node that served it: the login under /admin/login
// sets an HttpOnly session cookie, and every call after that goes to
// /admin/api/…, which is the node's HTTP API behind that cookie (the page
// never sees the API key). The nodes are polled every second, an open room
// every two seconds; a 401 at any time (the session expired, or the key
// changed) brings the login form back.

import { drawSparkline, sparkline } from './charts.js';

const $ = (id) => document.getElementById(id);

const NODES_EVERY_MS = 1000;
const ROOM_EVERY_MS = 2000;
const CALL_TIMEOUT_MS = 5000;
const MESSAGES_SHOWN = 20;

const ui = {
  loading: $('loading'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  key: $('admin-key'),
  loginError: $('login-error'),
  dashboard: $('dashboard'),
  sessionBar: $('session-bar'),
  sessionText: $('session-text'),
  logout: $('logout'),
  nodes: $('nodes'),
  clusterSummary: $('cluster-summary'),
  clusterUpdated: $('cluster-updated'),
  clusterError: $('cluster-error'),
  roomForm: $('room-form'),
  roomName: $('room-name'),
  roomError: $('room-error'),
  roomView: $('room-view'),
  roomPosition: $('room-position'),
  roomAction: $('room-action'),
  members: $('members').querySelector('tbody'),
  memberCount: $('member-count'),
  membersEmpty: $('members-empty'),
  messages: $('messages').querySelector('tbody'),
  messagesEmpty: $('messages-empty'),
  publishForm: $('publish-form'),
  publishRoom: $('publish-room'),
  publishData: $('publish-data'),
  publishResult: $('publish-result'),
  disconnectForm: $('disconnect-form'),
  disconnectId: $('disconnect-id'),
  disconnectResult: $('disconnect-result'),
};

/** The session ended (or never began): the caller shows the login form. */
class LoggedOut extends Error {}

/** A call to this node; JSON in and out. Throws with the server's message. */
async function call(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin', signal: AbortSignal.timeout(CALL_TIMEOUT_MS) };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (response.status === 401 && path.startsWith('/admin/api/')) {
    throw new LoggedOut(answer?.message || 'not logged in');
  }
  if (!response.ok) {
    const error = new Error(answer?.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function rate(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

// ---- session ----

let running = false;
let nodesTimer = null;
let roomTimer = null;

function showLogin(message = '') {
  running = false;
  clearTimeout(nodesTimer);
  clearTimeout(roomTimer);
  ui.loading.hidden = true;
  ui.dashboard.hidden = true;
  ui.sessionBar.hidden = true;
  ui.loginView.hidden = false;
  show(ui.loginError, message);
  ui.key.focus();
}

function showDashboard(session) {
  ui.loading.hidden = true;
  ui.loginView.hidden = true;
  ui.dashboard.hidden = false;
  ui.sessionBar.hidden = false;
  ui.sessionText.textContent = `Served by ${session.node} · logged in until ${clock(session.expires_at_ms)}`;
  if (!running) {
    running = true;
    pollNodes();
    if (room) pollRoom();
  }
}

/** What to do with a failed call: log out on a 401, else show `where`. */
function failed(error, where) {
  if (error instanceof LoggedOut) {
    showLogin('Your session ended. Log in again.');
  } else {
    show(where, error.message);
  }
}

ui.loginForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  show(ui.loginError, '');
  try {
    const session = await call('POST', '/admin/login', { key: ui.key.value });
    ui.key.value = '';
    showDashboard(session);
  } catch (error) {
    const message = error.status === 401 ? 'Wrong admin key.' : error.message;
    show(ui.loginError, message);
    ui.key.select();
  }
});

ui.logout.addEventListener('click', async () => {
  try {
    await call('POST', '/admin/logout');
  } finally {
    showLogin('');
  }
});

// ---- nodes ----

const SERIES = [
  { field: 'connections', label: 'Connections', format: String },
  { field: 'rooms', label: 'Rooms', format: String },
  { field: 'published_per_second', label: 'Publishes/s', format: rate },
  { field: 'delivered_per_second', label: 'Deliveries/s', format: rate },
];

/** The card of one node, made on first sight. */
function nodeCard(id) {
  const existing = ui.nodes.querySelector(`article[data-node="${CSS.escape(id)}"]`);
  if (existing) return existing;
  const card = el('article', 'node');
  card.dataset.node = id;
  const head = el('div', 'node-head');
  const title = el('h3', 'node-name', id);
  title.id = `node-${id}`;
  card.setAttribute('aria-labelledby', title.id);
  head.append(title, el('span', 'badge'), el('span', 'node-facts muted small'));
  const metrics = el('div', 'metrics');
  for (const series of SERIES) {
    const metric = el('div', 'metric');
    const value = el('div', 'metric-value', '–');
    value.dataset.field = series.field;
    metric.append(el('div', 'metric-label', series.label), value, sparkline());
    metric.dataset.series = series.field;
    metrics.append(metric);
  }
  card.append(head, metrics);
  return card;
}

function renderNodes(view) {
  const seen = new Set();
  const cards = [];
  for (const node of view.nodes) {
    seen.add(node.node);
    const card = nodeCard(node.node);
    const state = !node.live ? 'stale' : node.draining ? 'draining' : 'live';
    card.dataset.state = state;
    const badge = card.querySelector('.badge');
    badge.textContent =
      state === 'stale' ? `not reporting (${Math.round(node.age_ms / 1000)} s)` : state === 'draining' ? 'draining' : 'live';
    badge.dataset.state = state;
    const facts = [node.engine];
    if (node.node === view.node) facts.push('this node');
    card.querySelector('.node-facts').textContent = facts.join(' · ');
    for (const series of SERIES) {
      const metric = card.querySelector(`[data-series="${series.field}"]`);
      metric.querySelector('.metric-value').textContent = series.format(node[series.field]);
      drawSparkline(metric.querySelector('svg'), node.history[series.field] || [], {
        label: `${series.label} of ${node.node}`,
        intervalMs: node.history.interval_ms,
        format: series.format,
      });
    }
    cards.push(card);
  }
  for (const card of [...ui.nodes.children]) {
    if (!seen.has(card.dataset.node)) card.remove();
  }
  // In the order the node gives (by id), moving only what is out of place.
  cards.forEach((card, i) => {
    if (ui.nodes.children[i] !== card) ui.nodes.insertBefore(card, ui.nodes.children[i] || null);
  });

  const live = view.nodes.filter((n) => n.live);
  const total = (field) => live.reduce((sum, n) => sum + n[field], 0);
  ui.clusterSummary.textContent =
    `${live.length} of ${view.nodes.length} node${view.nodes.length === 1 ? '' : 's'} reporting · ` +
    `${total('connections')} connections · ${rate(total('published_per_second'))} publishes/s · ` +
    `${rate(total('delivered_per_second'))} deliveries/s`;
  ui.clusterUpdated.textContent = `Updated ${clock(Date.now())}`;
  show(ui.clusterError, view.error ? `Other nodes unknown: ${view.error}` : '');
}

async function pollNodes() {
  if (!running) return;
  try {
    renderNodes(await call('GET', '/admin/api/nodes'));
  } catch (error) {
    failed(error, ui.clusterError);
  } finally {
    if (running) nodesTimer = setTimeout(pollNodes, NODES_EVERY_MS);
  }
}

// ---- room inspector ----

let room = null;
/** What the room tables show now, to redraw them only when it changed. */
let shownRoom = { members: null, messages: null };

function renderMembers(members) {
  const signature = JSON.stringify(members);
  if (signature === shownRoom.members) return;
  shownRoom.members = signature;
  // Redrawing replaces the buttons: keep the keyboard focus where it was.
  const focused = document.activeElement?.dataset?.action ? document.activeElement.dataset.action : null;
  const rows = members.map((member) => {
    const row = el('tr');
    row.dataset.session = member.session;
    row.dataset.user = member.user;
    const session = el('td');
    session.append(el('code', '', member.session));
    const info = el('td', 'data', member.info === undefined ? '' : JSON.stringify(member.info));
    const actions = el('td', 'actions');
    for (const [by, id, text] of [
      ['session', member.session, 'Disconnect session'],
      ['user', member.user, 'Disconnect user'],
    ]) {
      const button = el('button', 'danger small-button', text);
      button.type = 'button';
      button.dataset.action = `${by}:${id}`;
      button.setAttribute('aria-label', `${text} ${id}`);
      button.addEventListener('click', () => disconnect(by, id, ui.roomAction));
      actions.append(button);
    }
    row.append(el('td', 'user', member.user), session, info, actions);
    return row;
  });
  ui.members.replaceChildren(...rows);
  ui.memberCount.textContent = String(members.length);
  ui.membersEmpty.hidden = members.length > 0;
  if (focused) ui.members.querySelector(`[data-action="${CSS.escape(focused)}"]`)?.focus();
}

function renderHistory(history) {
  ui.roomPosition.textContent = history.epoch
    ? `Epoch ${history.epoch} · latest offset ${history.offset}`
    : 'This room has no history yet (no epoch).';
  const signature = JSON.stringify(history.messages);
  if (signature === shownRoom.messages) return;
  shownRoom.messages = signature;
  const rows = history.messages.map((message) => {
    const row = el('tr');
    row.dataset.offset = String(message.offset);
    const data = JSON.stringify(message.data);
    const cell = el('td', 'data', data.length > 300 ? `${data.slice(0, 299)}…` : data);
    cell.title = data;
    const offset = el('td', 'offset', String(message.offset));
    offset.title = `epoch ${message.epoch}`;
    row.append(
      offset,
      el('td', 'time', clock(message.published_at_ms)),
      el('td', 'from', message.from ? message.from.user : 'API'),
      cell,
    );
    return row;
  });
  ui.messages.replaceChildren(...rows);
  ui.messagesEmpty.hidden = history.messages.length > 0;
}

async function loadRoom() {
  const name = room;
  const path = encodeURIComponent(name);
  const [presence, history] = await Promise.all([
    call('GET', `/admin/api/presence/${path}`),
    call('GET', `/admin/api/history/${path}?limit=${MESSAGES_SHOWN}`),
  ]);
  if (name !== room) return;
  renderMembers(presence.members);
  renderHistory(history);
  show(ui.roomError, '');
  ui.roomView.hidden = false;
}

async function pollRoom() {
  clearTimeout(roomTimer);
  if (!running || !room) return;
  try {
    await loadRoom();
  } catch (error) {
    failed(error, ui.roomError);
  } finally {
    if (running && room) roomTimer = setTimeout(pollRoom, ROOM_EVERY_MS);
  }
}

ui.roomForm.addEventListener('submit', (event) => {
  event.preventDefault();
  room = ui.roomName.value.trim();
  shownRoom = { members: null, messages: null };
  show(ui.roomAction, '');
  ui.roomView.hidden = true;
  if (!ui.publishRoom.value) ui.publishRoom.value = room;
  pollRoom();
});

// ---- actions ----

ui.publishForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const target = ui.publishRoom.value.trim();
  let data;
  try {
    data = JSON.parse(ui.publishData.value);
  } catch (error) {
    show(ui.publishResult, `The data is not valid JSON: ${error.message}`);
    ui.publishResult.dataset.outcome = 'error';
    return;
  }
  try {
    const answer = await call('POST', '/admin/api/publish', { room: target, data });
    ui.publishResult.dataset.outcome = 'ok';
    show(ui.publishResult, `Published to ${target}: offset ${answer.offset}, epoch ${answer.epoch}.`);
    if (target === room) pollRoom();
  } catch (error) {
    ui.publishResult.dataset.outcome = 'error';
    failed(error, ui.publishResult);
  }
});

async function disconnect(by, id, where) {
  try {
    const answer = await call('POST', '/admin/api/disconnect', { [by]: id });
    const n = answer.disconnected;
    where.dataset.outcome = 'ok';
    show(where, `Disconnected ${by} ${id}: ${n} connection${n === 1 ? '' : 's'} closed.`);
    if (room) pollRoom();
  } catch (error) {
    where.dataset.outcome = 'error';
    failed(error, where);
  }
}

ui.disconnectForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const by = new FormData(ui.disconnectForm).get('by');
  disconnect(by, ui.disconnectId.value.trim(), ui.disconnectResult);
});

// ---- start ----

call('GET', '/admin/session')
  .then(showDashboard)
  .catch(() => showLogin(''));
