#!/usr/bin/env python3
"""AgentGym environment-server protocol for third-party text games (g2po).

Serves, from their Python-registry packages and with nothing downloaded at run time:

  /textworld-express/coin     TextWorld-Express coin collector (4 rooms, doors)
  /textworld-express/cooking  TextWorld-Express cooking world (1 room, 1 ingredient)
  /babyai/<Level>             a BabyAI level of minigrid (e.g. /babyai/GoToRedBallGrey)

Each path answers AgentGym's calls: GET /, POST /create, POST /reset {"id", "data_idx"},
POST /step {"id", "action"}, GET /observation?id=N, POST /close {"id"}. Errors are
{"error": "..."} with status 200 (unknown id, finished episode, instance limit) or 400 (a body
that is not the call's JSON). Step answers also carry "valid" and "success" (extensions a
stock AgentGym client ignores). GET / at the root lists the paths.

Usage: agentgym_server.py [--host 127.0.0.1] [--port 0] [--max-instances 256]
Prints "listening on http://HOST:PORT" on stdout once bound (--port 0 picks a free port).
Instances live in one table keyed by integer ids allocated under a lock; at most
--max-instances are open at once and POST /close frees one.

Observation layouts (what the client's canonicalisers expect):

TextWorld-Express (the input of the DRRN-style baselines: task, feedback, room, inventory):
    Your task: <task description>          <- first observation of an episode only
    <blank line>
    <feedback of the last action>          <- omitted when it repeats the room or inventory
    <blank line>
    <room description ("look")>
    <blank line>
    <inventory>
    <blank line>
    Score: 0.50  Moves: 7                  <- the game's score and move counter
    Available actions: ["...", ...]
data_idx d plays the game generated from seed splitmix64(d) mod 2**31 of the "train" fold,
so every data_idx is its own game and indexes far apart never meet.

BabyAI (AgentGym's layout):
    Your goal: <mission>                   <- first observation of an episode only
    <what the agent sees in its 7x7 egocentric view, and what it carries>
    Available actions: ["turn left", "turn right", "move forward", ...]
data_idx d is the level's seed d. An action outside the list changes nothing ("valid": false).
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 1 << 20

COIN_PARAMS = "numLocations=4,numDistractorItems=0,includeDoors=1,limitInventorySize=0"
COOKING_PARAMS = "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0"
TWX_GAMES = {"coin": ("coin", COIN_PARAMS), "cooking": ("cookingworld", COOKING_PARAMS)}


class ProtocolError(Exception):
    """An error answered as {"error": message} with the given HTTP status."""

    def __init__(self, message, status=200):
        super().__init__(message)
        self.status = status


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def paragraph(text):
    """Trimmed non-empty lines of a game text, one paragraph."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def actions_line(actions):
    return "Available actions: " + json.dumps(list(actions))


# ----------------------------------------------------------------------------- TextWorld-Express


class TwxJvm:
    """One Java virtual machine hosting every TextWorld-Express game instance.

    The package starts a JVM per TextWorldExpressEnv (about 0.3 s and 100+ MB each); its Java
    class PythonInterface is one game, so one JVM holds many (py4j serves concurrent calls on
    separate connections; instances share no state: checked by the tests' determinism runs).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.gateway = None

    def interface(self):
        with self.lock:
            if self.gateway is None:
                from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
                from textworld_express.constants import BASEPATH, JAR_PATH

                port, proc = launch_gateway(
                    classpath=JAR_PATH, die_on_exit=True, cwd=BASEPATH, javaopts=["-Xverify:none"], return_proc=True
                )
                self.gateway = JavaGateway(
                    gateway_parameters=GatewayParameters(auto_field=True, port=port), java_process=proc
                )
            return self.gateway.jvm.textworldexpress.runtime.PythonInterface()


class TwxGame:
    def __init__(self, jvm, game):
        self.name, self.params = TWX_GAMES[game]
        self.iface = jvm.interface()
        msg = self.iface.load(self.name, self.params)
        if msg:
            raise ProtocolError(f"textworld-express cannot load {self.name}: {msg}", 500)
        self.task = ""
        self.moves = 0
        self.actions = []

    def render(self, info, first):
        parts = []
        if first:
            parts.append("Your task: " + paragraph(self.task))
        feedback, look, inv = paragraph(info["observation"]), paragraph(info["look"]), paragraph(info["inventory"])
        if feedback and feedback not in (look, inv):
            parts.append(feedback)
        parts += [look, inv, f"Score: {info['score']:.2f}  Moves: {self.moves}"]
        self.actions = sorted(set(info["validActions"]))
        return "\n\n".join(parts) + "\n" + actions_line(info["validActions"])

    def reset(self, data_idx):
        seed = splitmix64(data_idx) % (1 << 31)
        info = json.loads(self.iface.generateNewGameJSON(seed, "train", False))
        self.task = self.iface.getTaskDescription()
        self.moves = 0
        return self.render(info, True)

    def step(self, action):
        valid = action in self.actions
        info = json.loads(self.iface.stepJSON(action))
        self.moves += 1
        score = float(info["score"])
        done = bool(info["tasksuccess"] or info["taskfailure"] or score >= 1.0)
        return self.render(info, False), score, done, valid, bool(info["tasksuccess"])


# ----------------------------------------------------------------------------------------- BabyAI

DIRECTIONS = ["east", "south", "west", "north"]


def steps(n):
    return f"{n} step" if n == 1 else f"{n} steps"


def describe_place(forward, right):
    """Where a cell lies relative to the agent (forward >= 0 cells ahead, right signed)."""
    parts = []
    if forward > 0:
        parts.append(f"{steps(forward)} in front of you")
    if right > 0:
        parts.append(f"{steps(right)} to your right")
    elif right < 0:
        parts.append(f"{steps(-right)} to your left")
    return " and ".join(parts) if parts else "right here"


class BabyAiGame:
    def __init__(self, level):
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the BabyAI levels)

        env_id = f"BabyAI-{level}-v0"
        if env_id not in gym.registry:
            raise ProtocolError(f"unknown BabyAI level {level!r}", 404)
        # The trainer caps the turns; the level must not truncate by itself.
        self.env = gym.make(env_id, max_steps=1 << 30)
        self.actions = []
        self.mission = ""

    def view(self):
        from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

        u = self.env.unwrapped
        grid, vis_mask = u.gen_obs_grid()
        image = grid.encode(vis_mask)
        seen = []
        ahead_wall = None
        # The view is 7x7 with the agent at (3, 6) looking towards row 0.
        for j in range(6, -1, -1):
            for i in range(7):
                kind, colour, state = (int(v) for v in image[i][j])
                name = IDX_TO_OBJECT[kind]
                forward, right = 6 - j, i - 3
                if name == "wall" and right == 0 and ahead_wall is None and forward > 0:
                    ahead_wall = forward
                if name in ("door", "key", "ball", "box", "goal", "lava"):
                    what = f"a {IDX_TO_COLOR[colour]} {name}"
                    if name == "door":
                        what = f"a {['open', 'closed', 'locked'][state]} {IDX_TO_COLOR[colour]} door"
                    seen.append(f"{what} {describe_place(forward, right)}")
        text = "You see " + ", ".join(seen) + "." if seen else "You see no objects."
        if ahead_wall is not None:
            text += f" There is a wall {steps(ahead_wall)} in front of you."
        carried = u.carrying
        text += f" You are carrying a {carried.color} {carried.type}." if carried else " You are not carrying anything."
        return text

    def available(self):
        u = self.env.unwrapped
        acts = ["turn left", "turn right"]
        front = u.grid.get(*u.front_pos)
        if front is None or front.can_overlap():
            acts.append("move forward")
        if front is not None and front.can_pickup() and u.carrying is None:
            acts.append(f"pick up {front.color} {front.type}")
        if front is None and u.carrying is not None:
            acts.append(f"drop {u.carrying.color} {u.carrying.type}")
        if front is not None and front.type == "door":
            if front.is_locked:
                if u.carrying is not None and u.carrying.type == "key" and u.carrying.color == front.color:
                    acts.append(f"unlock {front.color} door")
            else:
                acts.append(f"{'close' if front.is_open else 'open'} {front.color} door")
        if front is not None and front.type == "box":
            acts.append(f"open {front.color} box")
        return acts

    def render(self, first):
        self.actions = self.available()
        head = f"Your goal: {self.mission}\n" if first else ""
        return head + self.view() + "\n" + actions_line(self.actions)

    def reset(self, data_idx):
        obs, _ = self.env.reset(seed=int(data_idx))
        self.mission = obs["mission"]
        return self.render(True)

    def step(self, action):
        u = self.env.unwrapped
        if action not in self.actions:
            return self.render(False), 0.0, False, False, False
        if action == "turn left":
            a = u.actions.left
        elif action == "turn right":
            a = u.actions.right
        elif action == "move forward":
            a = u.actions.forward
        elif action.startswith("pick up"):
            a = u.actions.pickup
        elif action.startswith("drop"):
            a = u.actions.drop
        else:
            a = u.actions.toggle
        _, reward, terminated, truncated, _ = self.env.step(a)
        success = bool(terminated and reward > 0)
        return self.render(False), (1.0 if success else 0.0), bool(terminated or truncated), True, success


# ------------------------------------------------------------------------------------- the server


class Instance:
    def __init__(self, path, game):
        self.path = path
        self.game = game
        self.lock = threading.Lock()
        self.last = None
        self.done = False


class Server:
    def __init__(self, max_instances):
        self.max_instances = max_instances
        self.lock = threading.Lock()
        self.next_id = 0
        self.instances = {}
        self.jvm = TwxJvm()

    def make_game(self, path):
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "textworld-express" and parts[1] in TWX_GAMES:
            return TwxGame(self.jvm, parts[1])
        if len(parts) == 2 and parts[0] == "babyai":
            return BabyAiGame(parts[1])
        raise ProtocolError(f"no environment at /{path.strip('/')}", 404)

    def valid_path(self, path):
        parts = path.strip("/").split("/")
        return (len(parts) == 2 and parts[0] == "textworld-express" and parts[1] in TWX_GAMES) or (
            len(parts) == 2 and parts[0] == "babyai"
        )

    def create(self, path):
        with self.lock:
            if len(self.instances) >= self.max_instances:
                raise ProtocolError(
                    f"too many instances: {len(self.instances)} open (limit {self.max_instances}); close some first"
                )
            iid = self.next_id
            self.next_id += 1
            self.instances[iid] = None  # reserved: the game is built outside the lock
        try:
            inst = Instance(path, self.make_game(path))
        except BaseException:
            with self.lock:
                del self.instances[iid]
            raise
        with self.lock:
            self.instances[iid] = inst
        return {"id": iid}

    def get(self, path, iid):
        if not isinstance(iid, int) or isinstance(iid, bool):
            raise ProtocolError(f"id must be an integer, got {iid!r}", 400)
        with self.lock:
            inst = self.instances.get(iid)
        if inst is None or inst.path != path:
            raise ProtocolError(f"The id {iid} is not valid.")
        return inst

    def reset(self, path, body):
        data_idx = body.get("data_idx", 0)
        if not isinstance(data_idx, int) or isinstance(data_idx, bool) or data_idx < 0:
            raise ProtocolError(f"data_idx must be a non-negative integer, got {data_idx!r}", 400)
        inst = self.get(path, body.get("id"))
        with inst.lock:
            text = inst.game.reset(data_idx)
            inst.last, inst.done = text, False
        return {"observation": text, "reward": 0.0, "score": 0.0, "done": False, "deleted": False}

    def step(self, path, body):
        action = body.get("action")
        if not isinstance(action, str):
            raise ProtocolError(f"action must be a string, got {action!r}", 400)
        iid = body.get("id")
        inst = self.get(path, iid)
        with inst.lock:
            if inst.last is None:
                raise ProtocolError(f"The id {iid} has not been reset.")
            if inst.done:
                raise ProtocolError(f"The task with environment {iid} has finished.")
            text, score, done, valid, success = inst.game.step(action)
            inst.last, inst.done = text, done
        return {"observation": text, "reward": score, "score": score, "done": done, "valid": valid, "success": success}

    def observation(self, path, query):
        try:
            iid = int(parse_qs(query)["id"][0])
        except (KeyError, ValueError, IndexError):
            raise ProtocolError("GET /observation needs ?id=N", 400) from None
        inst = self.get(path, iid)
        with inst.lock:
            if inst.last is None:
                raise ProtocolError(f"The id {iid} has not been reset.")
            return {"observation": inst.last}

    def close(self, path, body):
        iid = body.get("id")
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None or inst.path != path:
                return False
            del self.instances[iid]
        return True

    def open_count(self):
        with self.lock:
            return len(self.instances)


def make_handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm the second waits for
        # the client's delayed ACK (40 ms a call on Linux).
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet: one line per request would swamp the logs
            pass

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def split(self):
            url = urlsplit(self.path)
            path = url.path.rstrip("/")
            for call in ("/create", "/reset", "/step", "/observation", "/close"):
                if path.endswith(call):
                    return path[: -len(call)], call, url.query
            return path, "/", url.query

        def read_raw(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                self.close_connection = True
                raise ProtocolError("request body too large", 400)
            self.raw = self.rfile.read(n) if n else b""

        def body(self):
            raw = self.raw
            if not raw:
                return {}
            try:
                value = json.loads(raw)
            except ValueError as e:
                raise ProtocolError(f"malformed request body: {e}", 400) from None
            if not isinstance(value, dict):
                raise ProtocolError("the request body must be a JSON object", 400)
            return value

        def handle_call(self, method):
            self.raw = b""
            try:
                # The body is read before anything can fail, or keep-alive would break.
                self.read_raw()
                env, call, query = self.split()
                if call == "/" and method == "GET":
                    if env == "":
                        return self.answer(
                            200,
                            "This is the g2po AgentGym server: /textworld-express/coin, "
                            "/textworld-express/cooking, /babyai/<Level>.",
                        )
                    if not server.valid_path(env):
                        raise ProtocolError(f"no environment at {env}", 404)
                    return self.answer(200, f"This is environment {env.strip('/')}.")
                if env == "" or not server.valid_path(env):
                    raise ProtocolError(f"no environment at {env or '/'}", 404)
                routes = {
                    ("POST", "/create"): lambda: server.create(env),
                    ("POST", "/reset"): lambda: server.reset(env, self.body()),
                    ("POST", "/step"): lambda: server.step(env, self.body()),
                    ("GET", "/observation"): lambda: server.observation(env, query),
                    ("POST", "/close"): lambda: server.close(env, self.body()),
                }
                route = routes.get((method, call))
                if route is None:
                    raise ProtocolError(f"method {method} not allowed on {call}", 405)
                self.answer(200, route())
            except ProtocolError as e:
                self.answer(e.status, {"error": str(e)})
            except Exception as e:  # an environment failing must not kill the server
                self.answer(500, {"error": f"{type(e).__name__}: {e}"})

        def do_GET(self):
            self.handle_call("GET")

        def do_POST(self):
            self.handle_call("POST")

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gave up (its timeout) leaves a broken pipe: not the server's error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-instances", type=int, default=256)
    args = p.parse_args(argv)
    if args.max_instances < 1:
        p.error("--max-instances must be positive")
    server = Server(args.max_instances)
    httpd = QuietServer((args.host, args.port), make_handler(server))
    host, port = httpd.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
