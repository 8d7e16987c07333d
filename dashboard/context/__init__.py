"""The shared API every dashboard page uses: the store, the selected run, the view state and the notices.

`dashboard/main.py` calls `prepare()` and publishes the view state before any page runs, so a page only reads:

    from dashboard import context

    run = context.current_run()      # the selected core.store.Run, or None when there is nothing to show
    view = context.view_state()      # dashboard.state.ViewState: run, layer, epoch, pcx/pcy/pcz, dims, color,
                                     #   size, opacity, sel (probe rows), compare (run ids)
    index = context.layer_index()    # position of view.layer in run.layers (0 when there are no layers)
    snapshot = context.snapshot()    # the snapshot at view.epoch (None: the latest), or None before the first
    others = context.compare_runs()  # draws the bound "Compare with" picker, returns the chosen Runs
    context.is_live(run)             # True while the run trains: poll with st.fragment(run_every=LIVE_SECONDS)
    context.set_selection(rows)      # select probe rows (URL `sel`); view.sel reads them back
    context.run_facts(run)           # state.RunFacts: layer names, captured epochs, components, probe size
    context.store()                  # the cached RunStore of STRATA_RUNS (a folder or fsspec URL; default ./runs)
    context.damaged_runs()           # summaries of the runs that cannot be opened, each with its reason
    context.lost_notice(run)         # says which captured snapshots of the run cannot be read, and why
    context.jobs()                   # the JobManager every session shares (training runs in subprocesses)
    context.access()                 # access.Access: this visitor's role ("none", "viewer", "editor") and why
    context.can_edit()               # True when this visitor may train, cancel, recover, rename and delete
    context.may_edit("delete runs")  # the same, saying why not: call it in every action that changes runs
    context.add_notice("...")        # shown at the top of the page; notices explain what a link could not show

Every view setting lives in the URL: sidebar widgets use `bind="query-params"` with the parameter name as
their key (`run`, `layer`, `epoch`, ...), and the selection (`sel`) is written to `st.query_params` directly.
A page's own controls can do the same with their own keys (e.g. `key="grad_role", bind="query-params"`).
Wrap live charts in `st.fragment(run_every=context.LIVE_SECONDS)` while `context.is_live()`.

Names, layer names, link values and messages come from users and from files: put them into Markdown (captions,
alerts, headers, labels, toasts) only through `plain()` (dashboard/views/text.py), and never show the store's path,
which is the server's business.

Page modules live in `dashboard/screens/` (not `pages/`: Streamlit's old multipage mode would run files in a
folder of that name as scripts of their own).

The package's modules, by role: `runs` (the shared store and job manager, the cached run list), `permissions` (who
may do what: sign-in settings and roles, asking the policy in `dashboard/access.py`), `page_notices` (the notices at
the top of the page), `link` (the view state kept in the URL: read, kept valid, published, shared) and `live` (a
run's charts, polled while it trains, and the notes over them). The names below are the package's public face;
the modules import each other directly, never through this one.
"""

from dashboard.context.link import (
    PAGE_CONTROLS,
    WIDGET_KEYS,
    compare_runs,
    current_run,
    finish,
    follow_run,
    layer_index,
    page_controls,
    prepare,
    publish,
    request_url_sync,
    run_facts,
    selection,
    set_selection,
    share_link,
    snapshot,
    view_state,
)
from dashboard.context.live import (
    is_live,
    live_caption,
    live_section,
    lost_notice,
    no_snapshot_yet,
    skipped_notice,
    training_progress,
)
from dashboard.context.page_notices import add_notice, notices
from dashboard.context.permissions import access, can_edit, may_edit, server_log, sign_in_settings
from dashboard.context.runs import (
    LIVE_SECONDS,
    damaged_runs,
    jobs,
    refresh_runs,
    run_summaries,
    runs_root,
    store,
)
from dashboard.context.runs import _jobs as _jobs  # tests reach the manager the pages share through it

__all__ = [
    "LIVE_SECONDS",
    "PAGE_CONTROLS",
    "WIDGET_KEYS",
    "access",
    "add_notice",
    "can_edit",
    "compare_runs",
    "current_run",
    "damaged_runs",
    "finish",
    "follow_run",
    "is_live",
    "jobs",
    "layer_index",
    "live_caption",
    "live_section",
    "lost_notice",
    "may_edit",
    "no_snapshot_yet",
    "notices",
    "page_controls",
    "prepare",
    "publish",
    "refresh_runs",
    "request_url_sync",
    "run_facts",
    "run_summaries",
    "runs_root",
    "selection",
    "server_log",
    "set_selection",
    "share_link",
    "sign_in_settings",
    "skipped_notice",
    "snapshot",
    "store",
    "training_progress",
    "view_state",
]
