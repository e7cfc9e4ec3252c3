"""A browser session made by hand, for the tests of what a student can do without the page: it speaks Streamlit's
websocket protocol (protobuf BackMsg and ForwardMsg on ws://HOST/_stcore/stream) and sends any widget state it
likes, to any widget id the server has shown it, disabled or not.

    with browser.served_app(folder, FEWSHOT_INSTRUCTOR_KEY="...") as url, ForgedSession(url) as student:
        student.open("train")
        student.run(trigger(student.widget("Stop training")))
"""

from google.protobuf.message import Message
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.Element_pb2 import Element
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates
from websockets.sync.client import connect

RUN_TIMEOUT = 60  # seconds a script run may take, on a busy machine
FINISHED = ForwardMsg.FINISHED_SUCCESSFULLY  # how a script run that raised nothing ends


def trigger(widget_id: str) -> WidgetState:
    """A press of the button `widget_id`."""
    return WidgetState(id=widget_id, trigger_value=True)


def text(widget_id: str, value: str) -> WidgetState:
    """A text field's or a menu's value (a menu sends the label of its choice)."""
    return WidgetState(id=widget_id, string_value=value)


def texts(widget_id: str, values: list) -> WidgetState:
    """A multiselect's choices (their labels)."""
    return WidgetState(id=widget_id, string_array_value={"data": values})


class ForgedSession:
    """One browser session on the app's websocket. run() sends a rerun with the widget states given (only those:
    the server keeps the others as they were), and keeps the elements that the run drew."""

    def __init__(self, url: str, timeout: float = RUN_TIMEOUT):
        self.timeout = timeout  # seconds the connection, and then each script run, may take
        self.websocket = connect(url.replace("http://", "ws://") + "_stcore/stream", subprotocols=["streamlit"],
                                 max_size=None, open_timeout=timeout)
        self.pages = {}  # a page's URL path name -> its script hash, from the navigation the server sends
        self.page = ""  # the script hash of the page shown: "" for app.py's default page
        self.elements = []  # what the last run drew
        self.fragment_of = {}  # a widget's id -> the id of the fragment that drew it ("" outside any)
        self.auto_reruns = {}  # a fragment's id -> the seconds between the reruns the page asks of the browser (the
        # server drops a rerun of a fragment that the page no longer draws, without a word)
        self.finished = None  # how the last run ended (ForwardMsg.ScriptFinishedStatus)

    def __enter__(self):
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def close(self) -> None:
        self.websocket.close()

    def open(self, page: str) -> list:
        """Opens the app, then its page `page` (its URL path: "train", "compare")."""
        self.run()
        self.page = self.pages[page]
        return self.run()

    def run(self, *widgets: WidgetState, fragment: str = "", auto: bool = False) -> list:
        """A rerun of the page shown with `widgets`, or of its fragment `fragment` alone, as the browser sends for
        a widget drawn in it (or, `auto`, every auto_reruns[fragment] seconds); returns the elements it drew, once
        it has finished."""
        state = ClientState(page_script_hash=self.page, widget_states=WidgetStates(widgets=widgets),
                            fragment_id=fragment, is_auto_rerun=auto)
        self.websocket.send(BackMsg(rerun_script=state).SerializeToString())
        self.elements = []
        while True:
            message = ForwardMsg.FromString(self.websocket.recv(timeout=self.timeout))
            kind = message.WhichOneof("type")
            if kind == "navigation":
                self.pages.update({page.url_pathname: page.page_script_hash for page in message.navigation.app_pages})
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                self.elements.append(message.delta.new_element)
                widget = _widget(message.delta.new_element)
                if widget is not None:
                    self.fragment_of[widget.id] = message.delta.fragment_id
            elif kind == "new_session" and not message.metadata.run.fragment_ids:  # a run of the whole page: it
                self.auto_reruns = {}  # asks again for the reruns of the fragments it draws
            elif kind == "auto_rerun":
                self.auto_reruns[message.auto_rerun.fragment_id] = message.auto_rerun.interval
            elif kind == "stop_auto_rerun":
                for fragment_id in message.stop_auto_rerun.fragment_ids:
                    self.auto_reruns.pop(fragment_id, None)
            elif kind == "script_finished" and message.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                self.finished = message.script_finished
                return self.elements

    def widgets(self, label: str) -> list:
        """The widgets of the last run whose label is `label`: (id, the widget's proto) pairs."""
        widgets = [widget for widget in map(_widget, self.elements) if widget is not None]
        return [(widget.id, widget) for widget in widgets if getattr(widget, "label", None) == label]

    def widget(self, label: str) -> str:
        """The id of the one widget of the last run labelled `label`."""
        [(widget_id, _)] = self.widgets(label)
        return widget_id

    def elements_of(self, kind: str) -> list:
        """The last run's elements of `kind` ("alert", "exception", "markdown", "progress", ...)."""
        return [getattr(element, kind) for element in self.elements if element.WhichOneof("type") == kind]

    def texts(self, kind: str) -> list:
        """The texts of the last run's elements of `kind`."""
        return [_text(element) for element in self.elements_of(kind)]


def _widget(element: Element) -> Message | None:
    kind = element.WhichOneof("type")
    inner = getattr(element, kind) if kind else None
    return inner if inner is not None and "id" in inner.DESCRIPTOR.fields_by_name else None


def _text(inner: Message) -> str:
    for field in ("body", "message", "text"):
        if field in inner.DESCRIPTOR.fields_by_name:
            return getattr(inner, field)
    return str(inner)
