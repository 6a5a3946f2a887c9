/* agentstream chat page: pick an agent, chat on a thread, watch each run stream live.
 *
 * Plain browser JavaScript, no build step, no external resources. The run's events are read
 * with an EventSource on /api/v1/threads/{thread_id}/stream/{run_id}, the way the product
 * description's snippet does (every event arrives as a 'message' whose data is
 * {"event": name, "data": object}). See docs/protocol.md for the protocol:
 *
 * - Every event carries an id; the browser resends the last one (Last-Event-ID) when it
 *   reconnects by itself after a dropped connection, and the stream continues exactly
 *   after it. If the browser gives up (readyState CLOSED: an error answer), the page
 *   reopens the stream itself with ?last_event_id=<last id seen>.
 * - thread.stream.gap announces a snapshot that rebuilds the run's state from nothing:
 *   provisional texts are reset and rebuilt from it.
 * - The run's terminal event ends the stream; the page then reloads the thread's stored
 *   messages so that what is shown is exactly what the thread holds.
 *
 * The page state is in the URL (?agent=NAME&thread=ID), so a thread can be reopened or
 * shared; opening it while a run is live joins that run mid-way.
 *
 * Run activity (what a run does besides writing messages) is shown above the run's reply,
 * in a per-run block: progress lines (thread.agent.progress) as muted italic lines, and one
 * collapsed <details> per tool call (name, arguments as they stream) and per child run
 * (agent, status, a link to its thread, relayed text) from thread.run.step.* and
 * thread.agent.child_delta. Activity is not stored: it shows for runs watched live.
 */
(() => {
  'use strict';

  const API = '/api/v1';
  const DEFAULT_AGENT = 'streaming-example'; // the agent the docs use, preselected when present
  const TERMINAL_EVENTS = new Set([
    'thread.run.completed',
    'thread.run.failed',
    'thread.run.cancelled',
    'thread.run.expired',
    'thread.run.incomplete',
    'thread.run.requires_action',
  ]);
  const LIVE_STATUSES = new Set(['queued', 'in_progress', 'cancelling']);
  const STATUS_LABELS = {
    idle: 'Ready',
    starting: 'Starting…',
    queued: 'Queued',
    in_progress: 'In progress',
    cancelling: 'Cancelling…',
    cancelled: 'Cancelled',
    failed: 'Failed',
    completed: 'Completed',
    incomplete: 'Incomplete',
    expired: 'Expired',
    requires_action: 'Waiting for you',
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $('app'),
    agentSelect: $('agent-select'),
    newChat: $('new-chat'),
    conversation: $('conversation'),
    welcomeAgent: $('welcome-agent'),
    welcomeTitle: $('welcome-title'),
    welcomeDescription: $('welcome-description'),
    pageError: $('page-error'),
    messages: $('messages'),
    runBar: $('run-bar'),
    runLive: $('run-live'),
    runStatus: $('run-status'),
    deltaCount: $('delta-count'),
    deltaLabel: $('delta-label'),
    connection: $('connection'),
    cancel: $('cancel-run'),
    runError: $('run-error'),
    composer: $('composer'),
    input: $('composer-input'),
    send: $('send'),
  };

  const state = {
    agents: [],
    agent: null, // the selected agent (GET /v1/agents entry)
    threadId: null,
    run: null, // the thread's latest run object, as last seen
    stream: null, // the live subscription, see startStream()
    messages: new Map(), // message id -> view {id, role, runId, assistantId, text, final, el}
    activity: new Map(), // run id -> {el, lines, steps: Map(key -> {el, args, relay, ...})}
    sending: false,
    generation: 0, // bumped whenever the page switches threads; stale async work checks it
  };

  // -- small helpers ---------------------------------------------------------------------

  const enc = encodeURIComponent;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // A hub started with API keys answers 401: ask for a key in the page's key form (never
  // window.prompt, which blocks the page and headless browsers), keep it for this browser
  // (localStorage), send it as a bearer token, and as ?token= on the stream (EventSource
  // cannot send headers). Requests refused at once share one question; a refused key is
  // forgotten and asked for again, saying why.
  const KEY_STORE = 'agentstream.apiKey';
  let apiKey = null;
  try {
    apiKey = window.localStorage.getItem(KEY_STORE);
  } catch (_err) {
    apiKey = null;
  }
  let keyAsked = null; // the pending question (a Promise), shared by concurrent requests

  function askForKey(message) {
    if (keyAsked) return keyAsked;
    const form = $('key-form');
    const input = $('key-input');
    $('key-message').textContent = message;
    form.hidden = false;
    input.value = '';
    input.focus();
    keyAsked = new Promise((resolve) => {
      const submitted = (event) => {
        event.preventDefault();
        const entered = input.value.trim();
        if (!entered) return;
        form.removeEventListener('submit', submitted);
        form.hidden = true;
        apiKey = entered;
        try {
          window.localStorage.setItem(KEY_STORE, apiKey);
        } catch (_err) {
          /* private mode: keep it for this page only */
        }
        keyAsked = null;
        resolve();
      };
      form.addEventListener('submit', submitted);
    });
    return keyAsked;
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    for (;;) {
      const sentKey = apiKey;
      if (sentKey) init.headers.Authorization = `Bearer ${sentKey}`;
      response = await fetch(API + path, init);
      if (response.status !== 401) break;
      const refused = await response.json().catch(() => null);
      if (apiKey === sentKey) {
        // This key (or none) was refused: forget it and ask.
        apiKey = null;
        try {
          window.localStorage.removeItem(KEY_STORE);
        } catch (_err) {
          /* nothing stored */
        }
        await askForKey(refused?.error?.message || 'Unauthorized.');
      }
    }
    const raw = await response.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch (_err) {
      data = null;
    }
    if (!response.ok) {
      const message = data?.error?.message || `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status);
    }
    return data;
  }

  function textOf(message) {
    return (message?.content || [])
      .filter((part) => part?.type === 'text')
      .map((part) => part?.text?.value ?? '')
      .join('');
  }

  function agentByName(name) {
    if (!name) return null;
    const bare = String(name).split('/')[0];
    return state.agents.find((a) => a.name === bare || a.id === name) || null;
  }

  function agentLabel(agent) {
    return agent?.display_name || agent?.name || 'Assistant';
  }

  function initial(label) {
    const match = String(label).match(/[\p{L}\p{N}]/u);
    return match ? match[0].toUpperCase() : '•';
  }

  // -- the URL ---------------------------------------------------------------------------

  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    const hash = new URLSearchParams(window.location.hash.replace(/^#/, ''));
    return {
      agent: params.get('agent') || hash.get('agent'),
      thread: params.get('thread') || hash.get('thread'),
    };
  }

  function writeUrl() {
    const params = new URLSearchParams();
    if (state.agent) params.set('agent', state.agent.name);
    if (state.threadId) params.set('thread', state.threadId);
    const query = params.toString();
    const url = `${window.location.pathname}${query ? `?${query}` : ''}`;
    if (url !== `${window.location.pathname}${window.location.search}`) {
      window.history.replaceState(null, '', url);
    }
  }

  // -- rendering: agent, errors, status --------------------------------------------------

  function renderAgents() {
    ui.agentSelect.replaceChildren();
    for (const agent of state.agents) {
      const option = document.createElement('option');
      option.value = agent.name;
      option.textContent = agentLabel(agent);
      ui.agentSelect.append(option);
    }
    ui.agentSelect.disabled = state.agents.length === 0;
    if (state.agents.length === 0) {
      const option = document.createElement('option');
      option.textContent = 'No agents';
      ui.agentSelect.append(option);
    }
  }

  function selectAgent(agent) {
    state.agent = agent;
    if (agent) ui.agentSelect.value = agent.name;
    const welcome = agent?.welcome || {};
    ui.welcomeAgent.textContent = agent ? agentLabel(agent) : '';
    ui.welcomeTitle.textContent =
      welcome.title || (agent ? `Chat with ${agentLabel(agent)}` : 'No agent available');
    ui.welcomeDescription.textContent = welcome.description || agent?.description || '';
    ui.welcomeDescription.hidden = !ui.welcomeDescription.textContent;
    document.title = agent ? `${agentLabel(agent)} · agentstream` : 'agentstream';
    ui.app.dataset.agent = agent?.name || '';
    updateControls();
  }

  function showPageError(message) {
    ui.pageError.textContent = message || '';
    ui.pageError.hidden = !message;
  }

  function showRunError(message, heading = 'The run failed: ') {
    ui.runError.replaceChildren();
    if (message) {
      const strong = document.createElement('strong');
      strong.textContent = heading;
      ui.runError.append(strong, document.createTextNode(message));
    }
    ui.runError.hidden = !message;
  }

  function setStatus(status) {
    const label = STATUS_LABELS[status] || status;
    ui.runStatus.textContent = label;
    ui.runStatus.dataset.status = status;
    ui.runBar.dataset.status = status;
  }

  function setConnection(connection) {
    ui.runBar.dataset.connection = connection;
    ui.connection.hidden = connection !== 'reconnecting';
  }

  function setDeltaCount(count) {
    ui.deltaCount.textContent = String(count);
    ui.deltaLabel.textContent = count === 1 ? 'delta received' : 'deltas received';
  }

  function applyRun(run) {
    if (!run || run.object !== 'thread.run') return;
    if (state.run && state.run.id === run.id && !LIVE_STATUSES.has(state.run.status)) {
      if (LIVE_STATUSES.has(run.status)) return; // a snapshot's older view of an ended run
    }
    state.run = run;
    ui.app.dataset.runId = run.id;
    setStatus(run.status);
    if (run.status === 'failed' || run.status === 'expired') {
      const fallback = run.status === 'failed' ? 'no reason given' : 'it ran out of time';
      showRunError(run.last_error?.message || fallback, `The run ${run.status}: `);
    } else {
      showRunError('');
    }
    updateControls();
  }

  function runIsLive() {
    return Boolean(state.run && LIVE_STATUSES.has(state.run.status)) || Boolean(state.stream);
  }

  function updateControls() {
    const live = runIsLive();
    ui.send.disabled = state.sending || live || !state.agent;
    ui.cancel.hidden = !(state.run && live);
    ui.cancel.disabled = !state.run || state.run.status === 'cancelling';
    ui.app.dataset.live = String(live);
    // Screen readers hold the status region's announcements (a counter changing many times
    // a second) while the run streams, then read its outcome once.
    ui.runLive.setAttribute('aria-busy', String(live));
  }

  // -- rendering: messages ---------------------------------------------------------------

  function nearBottom() {
    const el = ui.conversation;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 96;
  }

  function keepScrolled(wasNearBottom) {
    if (wasNearBottom) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }

  function messageView(object) {
    let view = state.messages.get(object.id);
    if (!view) {
      view = {
        id: object.id,
        role: object.role === 'user' ? 'user' : 'assistant',
        runId: object.run_id || null,
        assistantId: object.assistant_id || null,
        text: '',
        final: false,
        el: null,
      };
      state.messages.set(object.id, view);
    } else {
      view.runId = object.run_id || view.runId;
      view.assistantId = object.assistant_id || view.assistantId;
    }
    return view;
  }

  function showsStreamingText(view) {
    const agent = agentByName(view.assistantId || state.run?.assistant_id) || state.agent;
    return agent ? agent.show_streaming_message !== false : true;
  }

  function buildMessage(view) {
    const li = document.createElement('li');
    li.className = `msg ${view.role}`;
    li.dataset.messageId = view.id;
    li.dataset.role = view.role;
    const agent = view.role === 'assistant' ? agentByName(view.assistantId) || state.agent : null;
    const who = view.role === 'user' ? 'You' : agentLabel(agent);

    const avatar = document.createElement('div');
    avatar.className = 'avatar';
    avatar.setAttribute('aria-hidden', 'true');
    avatar.textContent = initial(who);

    const bubble = document.createElement('div');
    bubble.className = 'bubble';
    const meta = document.createElement('div');
    meta.className = 'meta';
    const name = document.createElement('span');
    name.className = view.role === 'user' ? 'who visually-hidden' : 'who';
    name.textContent = who;
    meta.append(name);
    bubble.append(meta);
    li.append(avatar, bubble);
    return li;
  }

  /** Render ``view`` as a provisional (still streaming) bubble. */
  function renderProvisional(view) {
    const wasNearBottom = nearBottom();
    if (!view.el) {
      view.el = buildMessage(view);
      ui.messages.append(view.el);
    }
    const li = view.el;
    const bubble = li.querySelector('.bubble');
    li.dataset.state = 'streaming';
    li.setAttribute('aria-busy', 'true');
    let badge = bubble.querySelector('.badge');
    if (!badge) {
      badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = 'streaming';
      bubble.querySelector('.meta').append(badge);
    }
    if (showsStreamingText(view)) {
      li.dataset.visibility = 'shown';
      bubble.querySelector('.typing')?.remove();
      let text = bubble.querySelector('.text');
      if (!text) {
        text = document.createElement('p');
        text.className = 'text';
        bubble.append(text);
      }
      if (text.textContent !== view.text) text.textContent = view.text;
    } else {
      li.dataset.visibility = 'hidden';
      bubble.querySelector('.text')?.remove();
      if (!bubble.querySelector('.typing')) {
        const typing = document.createElement('span');
        typing.className = 'typing';
        const dots = document.createElement('span');
        dots.className = 'dots';
        dots.setAttribute('aria-hidden', 'true');
        dots.append(
          document.createElement('span'),
          document.createElement('span'),
          document.createElement('span'),
        );
        const label = document.createElement('span');
        label.textContent = 'Writing a reply…';
        typing.append(dots, label);
        bubble.append(typing);
      }
    }
    keepScrolled(wasNearBottom);
  }

  /** Render the stored message ``object`` (replacing a provisional bubble, if any). */
  function renderFinal(object) {
    const wasNearBottom = nearBottom();
    const view = messageView(object);
    const text = textOf(object);
    const incomplete = object.status === 'incomplete';
    if (view.final && view.el && view.text === text && view.incomplete === incomplete) {
      return view;
    }
    view.text = text;
    view.final = true;
    view.incomplete = incomplete;
    const li = buildMessage(view);
    li.dataset.state = 'final';
    const bubble = li.querySelector('.bubble');
    if (incomplete) {
      const badge = document.createElement('span');
      badge.className = 'badge incomplete';
      badge.textContent = 'incomplete';
      bubble.querySelector('.meta').append(badge);
    }
    const p = document.createElement('p');
    p.className = 'text';
    p.textContent = text;
    bubble.append(p);
    if (view.el) view.el.replaceWith(li);
    else ui.messages.append(li);
    view.el = li;
    keepScrolled(wasNearBottom);
    return view;
  }

  function clearMessages() {
    state.messages.clear();
    state.activity.clear();
    ui.messages.replaceChildren();
  }

  // -- rendering: run activity (progress lines, tool calls, child runs) -------------------

  /** Place a run's activity block just above the run's first assistant message. */
  function placeActivity(runId) {
    const block = state.activity.get(runId);
    if (!block) return;
    let first = null;
    for (const view of state.messages.values()) {
      if (view.el && view.role === 'assistant' && view.runId === runId && view.el.isConnected) {
        if (!first || first.compareDocumentPosition(view.el) & Node.DOCUMENT_POSITION_PRECEDING) {
          first = view.el;
        }
      }
    }
    if (first) {
      if (block.el.nextSibling !== first) ui.messages.insertBefore(block.el, first);
    } else if (!block.el.isConnected) {
      ui.messages.append(block.el);
    }
  }

  function activityBlock(runId) {
    let block = state.activity.get(runId);
    if (!block) {
      const li = document.createElement('li');
      li.className = 'activity';
      li.dataset.runId = runId;
      const lines = document.createElement('div');
      lines.className = 'progress-lines';
      const steps = document.createElement('div');
      steps.className = 'steps';
      li.append(lines, steps);
      block = { el: li, lines, stepsEl: steps, steps: new Map() };
      state.activity.set(runId, block);
    }
    const wasNearBottom = nearBottom();
    placeActivity(runId);
    keepScrolled(wasNearBottom);
    return block;
  }

  function addProgress(runId, text) {
    const block = activityBlock(runId);
    const line = document.createElement('p');
    line.className = 'progress-line';
    line.textContent = text;
    block.lines.append(line);
  }

  const STEP_LABELS = {
    in_progress: 'running',
    completed: 'done',
    cancelled: 'cancelled',
    failed: 'failed',
    expired: 'expired',
  };

  function stepItem(block, key, kind) {
    let item = block.steps.get(key);
    if (!item) {
      const details = document.createElement('details');
      details.className = `step ${kind}`;
      details.dataset.step = key;
      const summary = document.createElement('summary');
      const label = document.createElement('span');
      label.className = 'step-label';
      const status = document.createElement('span');
      status.className = 'step-status';
      summary.append(label, status);
      details.append(summary);
      item = { el: details, label, status, body: null, args: '', relay: '' };
      block.steps.set(key, item);
      block.stepsEl.append(details);
    }
    return item;
  }

  function setStepStatus(item, status) {
    item.el.dataset.status = status;
    item.status.textContent = STEP_LABELS[status] || status;
  }

  function renderToolCall(item, name, args) {
    item.label.textContent = `Tool call: ${name || 'function'}`;
    if (!item.body) {
      item.body = document.createElement('pre');
      item.body.className = 'tool-args';
      item.el.append(item.body);
    }
    item.args = args;
    item.body.textContent = args;
  }

  function renderChildRun(item, child) {
    const agent = agentByName(child.assistant_id);
    item.label.textContent = `Child run: ${agentLabel(agent) || child.assistant_id}`;
    item.el.dataset.childThread = child.thread_id;
    item.el.dataset.childRun = child.run_id;
    item.el.dataset.childStatus = child.status;
    if (!item.body) {
      item.body = document.createElement('div');
      item.body.className = 'child-body';
      const meta = document.createElement('p');
      meta.className = 'child-meta';
      const link = document.createElement('a');
      link.className = 'child-link';
      link.textContent = 'Open the child thread';
      const relay = document.createElement('pre');
      relay.className = 'child-relay';
      relay.hidden = true;
      item.body.append(meta, link, relay);
      item.el.append(item.body);
    }
    const params = new URLSearchParams({ agent: child.assistant_id, thread: child.thread_id });
    item.body.querySelector('.child-link').href = `${window.location.pathname}?${params}`;
    item.body.querySelector('.child-meta').textContent =
      `${child.assistant_id} · run ${child.run_id} · ${STATUS_LABELS[child.status] || child.status}`;
  }

  /** thread.run.step.created / in_progress / completed / cancelled / failed / expired. */
  function applyStep(sub, name, step) {
    if (!step?.id || !step.step_details) return;
    const block = activityBlock(step.run_id || sub.runId);
    const details = step.step_details;
    if (details.type === 'tool_calls') {
      const calls = details.tool_calls || [];
      if (name === 'thread.run.step.created') {
        // (Re)start: a snapshot replays the step from its creation.
        for (const [key, item] of block.steps) {
          if (key.startsWith(`${step.id}:`)) {
            item.args = '';
            item.name = '';
          }
        }
      }
      calls.forEach((call, index) => {
        const item = stepItem(block, `${step.id}:${call.index ?? index}`, 'tool-call');
        item.name = call.function?.name || item.name || '';
        renderToolCall(item, item.name, call.function?.arguments ?? '');
        setStepStatus(item, step.status);
      });
      for (const [key, item] of block.steps) {
        if (key.startsWith(`${step.id}:`)) setStepStatus(item, step.status);
      }
    } else if (details.type === 'child_run' && details.child_run) {
      const item = stepItem(block, step.id, 'child-run');
      renderChildRun(item, details.child_run);
      setStepStatus(item, step.status);
    }
  }

  function applyStepDelta(sub, delta) {
    const calls = delta?.delta?.step_details?.tool_calls;
    if (!delta?.id || !Array.isArray(calls)) return;
    const block = activityBlock(sub.runId);
    for (const call of calls) {
      const key = `${delta.id}:${call.index ?? 0}`;
      const known = block.steps.has(key);
      const item = stepItem(block, key, 'tool-call');
      if (!known) {
        item.name = '';
        setStepStatus(item, 'in_progress');
      }
      if (call.function?.name) item.name = (item.name || '') + call.function.name;
      renderToolCall(item, item.name, item.args + (call.function?.arguments ?? ''));
    }
  }

  function applyChildDelta(sub, data) {
    if (!data?.step_id) return;
    const block = activityBlock(sub.runId);
    const item = block.steps.get(data.step_id);
    if (!item?.body) return;
    const relay = item.body.querySelector('.child-relay');
    relay.hidden = false;
    if (item.relayMessage && item.relayMessage !== data.message_id) relay.textContent += '\n\n';
    item.relayMessage = data.message_id;
    relay.textContent += data.text || '';
  }

  /** Show exactly the stored ``messages`` (in order), reusing bubbles that already match. */
  function reconcile(messages) {
    const keep = new Set();
    for (const object of messages) {
      const view = renderFinal(object);
      keep.add(view.id);
      ui.messages.append(view.el); // moves it into the stored order
    }
    for (const [id, view] of state.messages) {
      if (!keep.has(id)) {
        view.el?.remove();
        state.messages.delete(id);
      }
    }
    for (const runId of state.activity.keys()) placeActivity(runId);
  }

  async function listMessages(threadId) {
    const out = [];
    let after = null;
    for (;;) {
      const query = new URLSearchParams({ order: 'asc', limit: '100' });
      if (after) query.set('after', after);
      const page = await api('GET', `/threads/${enc(threadId)}/messages?${query}`);
      out.push(...page.data);
      if (!page.has_more || page.data.length === 0) return out;
      after = page.last_id;
    }
  }

  // -- the run's event stream ------------------------------------------------------------

  /** Subscribe to ``run``'s events, from its first event (or after ``cursor``). */
  function startStream(run, cursor = null) {
    stopStream();
    const sub = {
      threadId: run.thread_id || state.threadId,
      runId: run.id,
      lastEventId: cursor,
      deltas: 0,
      done: false,
      source: null,
      retries: 0,
      generation: state.generation,
    };
    state.stream = sub;
    setDeltaCount(0);
    setConnection('connecting');
    openSource(sub);
    updateControls();
    return sub;
  }

  function openSource(sub) {
    const query = new URLSearchParams();
    if (sub.lastEventId !== null) query.set('last_event_id', String(sub.lastEventId));
    if (apiKey) query.set('token', apiKey);
    let url = `${API}/threads/${enc(sub.threadId)}/stream/${enc(sub.runId)}`;
    if ([...query].length) url += `?${query}`;
    const source = new EventSource(url);
    sub.source = source;
    ui.app.dataset.streamOpens = String(Number(ui.app.dataset.streamOpens || 0) + 1);

    source.addEventListener('open', () => {
      if (state.stream !== sub || sub.source !== source) return;
      setConnection('open');
    });

    source.addEventListener('message', (event) => {
      if (state.stream !== sub || sub.source !== source || sub.done) return;
      // Gap and snapshot events carry no id of their own: the browser keeps the previous
      // one, and the snapshot's last event carries the id of the last real event.
      if (event.lastEventId !== '') sub.lastEventId = event.lastEventId;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_err) {
        return;
      }
      sub.retries = 0;
      handleEvent(sub, data.event, data.data);
    });

    source.onerror = () => {
      if (state.stream !== sub || sub.source !== source || sub.done) {
        source.close();
        return;
      }
      setConnection('reconnecting');
      // CONNECTING: the browser reconnects by itself, sending Last-Event-ID.
      // CLOSED: it gave up (an error answer); reopen from the last event id ourselves.
      if (source.readyState === EventSource.CLOSED) recover(sub);
    };
  }

  async function recover(sub) {
    sub.source?.close();
    while (state.stream === sub && !sub.done) {
      await sleep(Math.min(250 * 2 ** sub.retries, 4000));
      sub.retries += 1;
      if (state.stream !== sub || sub.done) return;
      let run;
      try {
        run = await api('GET', `/threads/${enc(sub.threadId)}/runs/${enc(sub.runId)}`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          await finishStream(sub, null);
          return;
        }
        continue; // the hub is unreachable: try again later
      }
      if (state.stream !== sub || sub.done) return;
      if (!LIVE_STATUSES.has(run.status)) {
        // Ended while we were away: the store holds every message's final text.
        await finishStream(sub, run);
      } else {
        openSource(sub);
      }
      return;
    }
  }

  function stopStream() {
    const sub = state.stream;
    if (!sub) return;
    sub.done = true;
    sub.source?.close();
    state.stream = null;
    setConnection('idle');
  }

  function handleEvent(sub, name, data) {
    switch (name) {
      case 'thread.stream.gap':
        // A snapshot follows that rebuilds the run from nothing: forget provisional text.
        ui.app.dataset.gaps = String(Number(ui.app.dataset.gaps || 0) + 1);
        for (const view of state.messages.values()) {
          if (!view.final && view.runId === sub.runId) view.text = '';
        }
        break;

      case 'thread.message.created':
      case 'thread.message.in_progress': {
        if (!data?.id) return;
        const view = messageView(data);
        if (view.final) return;
        if (name === 'thread.message.created') view.text = '';
        if (view.role === 'assistant') renderProvisional(view);
        break;
      }

      case 'thread.message.delta': {
        sub.deltas += 1;
        setDeltaCount(sub.deltas);
        if (!data?.delta?.content) return;
        const content = data.delta.content;
        if (content.length === 0 || !content[0]?.text?.value) return;
        const view = messageView({ id: data.id, role: 'assistant', run_id: sub.runId });
        if (view.final) return;
        view.text += content.map((part) => part?.text?.value ?? '').join('');
        renderProvisional(view);
        break;
      }

      case 'thread.message.completed':
      case 'thread.message.incomplete': {
        if (!data?.id) return;
        // The streamed text must be exactly the stored one (a self-check, shown as
        // data-mismatches: a duplicated or lost delta would make them differ).
        const view = state.messages.get(data.id);
        if (view && !view.final && view.text && view.text !== textOf(data)) {
          ui.app.dataset.mismatches = String(Number(ui.app.dataset.mismatches || 0) + 1);
          console.warn(`message ${data.id}: streamed text differs from the stored text`);
        }
        renderFinal(data);
        break;
      }

      case 'thread.run.step.created':
      case 'thread.run.step.in_progress':
      case 'thread.run.step.completed':
      case 'thread.run.step.cancelled':
      case 'thread.run.step.failed':
      case 'thread.run.step.expired':
        applyStep(sub, name, data);
        break;

      case 'thread.run.step.delta':
        applyStepDelta(sub, data);
        break;

      case 'thread.agent.progress':
        if (typeof data?.text === 'string') addProgress(data.run_id || sub.runId, data.text);
        break;

      case 'thread.agent.child_delta':
        applyChildDelta(sub, data);
        break;

      default:
        if (name?.startsWith('thread.run.') && data?.object === 'thread.run') {
          applyRun(data);
          if (TERMINAL_EVENTS.has(name)) finishStream(sub, data);
        }
    }
  }

  /** The run ended: close the stream and show exactly what the thread stores. */
  async function finishStream(sub, run) {
    if (sub.finishing) return;
    sub.finishing = true;
    sub.done = true;
    sub.source?.close();
    if (run) applyRun(run);
    try {
      const messages = await listMessages(sub.threadId);
      if (state.generation === sub.generation && state.threadId === sub.threadId) {
        reconcile(messages);
      }
    } catch (err) {
      if (state.generation === sub.generation) showPageError(`Could not reload the thread: ${err.message}`);
    }
    if (state.stream === sub) {
      state.stream = null;
      setConnection('idle');
    }
    ui.app.dataset.streamDone = sub.runId;
    updateControls();
  }

  // -- threads and runs ------------------------------------------------------------------

  function resetThread() {
    state.generation += 1;
    stopStream();
    state.threadId = null;
    state.run = null;
    delete ui.app.dataset.runId;
    clearMessages();
    showPageError('');
    showRunError('');
    setStatus('idle');
    setDeltaCount(0);
    updateControls();
  }

  /** Show thread ``threadId``; join its latest run if it is still live. */
  async function openThread(threadId) {
    resetThread();
    state.threadId = threadId;
    const generation = state.generation;
    let runs;
    let messages;
    try {
      // The run first: if it is live, its messages come from its stream (from event 1).
      runs = await api('GET', `/threads/${enc(threadId)}/runs?limit=1`);
      messages = await listMessages(threadId);
    } catch (err) {
      if (generation !== state.generation) return;
      state.threadId = null;
      writeUrl();
      showPageError(
        err.status === 404
          ? 'That thread does not exist any more. Start a new chat below.'
          : `Could not open the thread: ${err.message}`,
      );
      return;
    }
    if (generation !== state.generation) return;
    const run = runs.data[0] || null;
    const live = Boolean(run && LIVE_STATUSES.has(run.status));
    for (const message of messages) {
      if (live && message.run_id === run.id) continue;
      renderFinal(message);
    }
    if (run) {
      if (!readUrl().agent) {
        const agent = agentByName(run.assistant_id);
        if (agent) selectAgent(agent);
      }
      applyRun(run);
      if (live) startStream(run);
    }
    writeUrl();
    ui.conversation.scrollTop = ui.conversation.scrollHeight;
    updateControls();
  }

  async function send(text) {
    if (!text.trim() || state.sending || runIsLive() || !state.agent) return;
    state.sending = true;
    updateControls();
    showPageError('');
    const generation = state.generation;
    try {
      if (!state.threadId) {
        const thread = await api('POST', '/threads', {});
        state.threadId = thread.id;
        writeUrl();
      }
      const threadId = state.threadId;
      const message = await api('POST', `/threads/${enc(threadId)}/messages`, {
        role: 'user',
        content: text,
      });
      if (generation !== state.generation) return;
      ui.input.value = '';
      autosize();
      renderFinal(message);
      ui.conversation.scrollTop = ui.conversation.scrollHeight;
      showRunError('');
      setStatus('starting');
      const run = await api('POST', `/threads/${enc(threadId)}/runs`, {
        assistant_id: state.agent.name,
      });
      if (generation !== state.generation) return;
      applyRun(run);
      startStream(run);
    } catch (err) {
      if (generation === state.generation) {
        showPageError(`Could not send: ${err.message}`);
        if (!state.run || !LIVE_STATUSES.has(state.run.status)) setStatus(state.run?.status || 'idle');
      }
    } finally {
      state.sending = false;
      updateControls();
    }
  }

  async function cancelRun() {
    const run = state.run;
    if (!run || !LIVE_STATUSES.has(run.status)) return;
    ui.cancel.disabled = true;
    try {
      const updated = await api(
        'POST',
        `/threads/${enc(run.thread_id)}/runs/${enc(run.id)}/cancel`,
      );
      if (state.run?.id === updated.id && LIVE_STATUSES.has(state.run.status)) applyRun(updated);
    } catch (err) {
      showPageError(`Could not cancel: ${err.message}`);
    } finally {
      updateControls();
    }
  }

  // -- the composer ----------------------------------------------------------------------

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = `${ui.input.scrollHeight}px`;
  }

  ui.input.addEventListener('input', autosize);
  ui.input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    send(ui.input.value);
  });
  ui.cancel.addEventListener('click', cancelRun);
  ui.newChat.addEventListener('click', () => {
    resetThread();
    writeUrl();
    ui.input.focus();
  });
  ui.agentSelect.addEventListener('change', () => {
    const agent = agentByName(ui.agentSelect.value);
    if (agent) selectAgent(agent);
    writeUrl();
  });
  window.addEventListener('popstate', () => {
    const { thread } = readUrl();
    if (thread && thread !== state.threadId) openThread(thread);
  });

  // -- start -----------------------------------------------------------------------------

  async function init() {
    try {
      const list = await api('GET', '/agents');
      state.agents = list.data || [];
    } catch (err) {
      showPageError(`Could not load the agents: ${err.message}`);
    }
    renderAgents();
    const wanted = readUrl();
    // The agent the docs use, when the hub has it; else the first.
    const fallback = agentByName(DEFAULT_AGENT) || state.agents[0] || null;
    selectAgent(agentByName(wanted.agent) || fallback);
    if (wanted.thread) await openThread(wanted.thread);
    else writeUrl();
    ui.app.dataset.ready = 'true';
    ui.input.focus();
  }

  init();
})();
