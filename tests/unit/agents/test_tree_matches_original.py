"""Fidelity to the original code (issue 11, item 3): each test pins one behaviour of
zhao-ht/DensePolicy@af77fbf that we reproduce, or the exact failure the original had."""
import asyncio

import pytest

from agents.parser import REMINDER_ANSWERS
from agents.runtime import FINISHED_SUFFIX, execute_generation, restore_end_action
from agents.tree import OriginalCrash, TreeRules, TreeSearch
from envs.base import Episode, StepResult


def _window(search, queue, outcome):
    """Record every leaf of `queue`: the run ends at the first node `outcome` gives a value for."""
    for full in queue:
        run = next((full[:d] for d in range(1, len(full) + 1) if outcome(full[:d]) is not None), full)
        y = outcome(run) or 0.0
        search.record(full, run, y, "success" if y else ("fail" if len(run) < len(full) else "max_steps"))


def _depth2_terminal(node):
    """Every depth-2 node ends the episode: label 1 solves the task, the others fail."""
    return (1.0 if node[1] == 1 else 0.0) if len(node) == 2 else None


@pytest.mark.parametrize("update_rows", ["fixed", "faithful"])
def test_faithful_stats_update_fails_like_the_original_after_a_duplicate(update_rows):
    """The original updates its stats with the last len(previous queue) rows. When a leaf of the window
    repeated an explored run index it was skipped, so that tail holds an already counted row whose
    leaf has no children, and `assert len(child_values) > 0` (update_node_score) kills the worker.
    It never double-counts. `fixed` updates with exactly the new rows and goes on."""
    rules = TreeRules(base=3, max_steps=3, window_size=8, update_rows=update_rows, max_sample_number=10 ** 6)
    search = TreeSearch(rules, seed=0)
    _window(search, search.first_queue(), _depth2_terminal)
    queue = search.next_queue()
    # the window holds all open (c, a, b) of the chosen node c; several share a terminal (c, a)
    _window(search, queue, _depth2_terminal)
    assert search.duplicates > 0
    if update_rows == "faithful":
        with pytest.raises(OriginalCrash, match="len\\(child_values\\) > 0"):
            search.next_queue()
    else:
        search.next_queue()
        assert all(s.runs == sum(r.run_index[:len(n)] == n for r in search.rows)
                   for n, s in search.tree.stats.items())


def test_faithful_update_without_duplicates_is_the_plain_update():
    """Without a skipped duplicate the tail of len(queue) rows is exactly the new rows: same tree as fixed."""
    trees = []
    for update_rows in ("fixed", "faithful"):
        rules = TreeRules(base=2, max_steps=3, window_size=1, update_rows=update_rows, max_sample_number=10 ** 6)
        search = TreeSearch(rules, seed=3)
        queue = search.first_queue()
        for _ in range(4):
            _window(search, queue, lambda n: None)
            queue = search.next_queue()
        assert search.duplicates == 0 and len(search.rows) >= 4
        trees.append({n: (s.visits, s.value) for n, s in search.tree.stats.items()})
    assert trees[0] == trees[1]


@pytest.mark.parametrize("select_leaves", [False, True])
def test_faithful_stop_rule_counts_pairs_after_the_selection_visit(select_leaves):
    """The original's loop condition counts qualifying pairs after `max_MC_score_item` added its +1
    visit to the chosen node, so that visit can complete a pair and stop the task at once.

    Hand computation (base 2, max_steps 2, faithful visits): runs (0,) success (ends at depth 1) and
    (1,0) fail. (0,): value 1, visits 1, avg rem 0 -> needs min(2**0, 8) = 1 visit: trusted.
    (1,): value 0, visits 1, avg rem 1 -> needs 2: not trusted -> 0 pairs before the selection.
    Priorities 0.8*gap**0.25 + 0.2*rem/2 + 2*sqrt(1+v)/(2+v): (0,) = 0.8 + 0 + 0.943,
    (1,) = 0.8 + 0.1 + 0.943 (the maximum), leaf (1,0) = 0 + 0 + 0.943. (1,) is chosen, gets visit 2,
    and the pair ((0,), (1,)) with gap 1 qualifies: 1 pair >= max_sample_number 1 -> stop.
    """
    rules = TreeRules(base=2, max_steps=2, window_size=2, visit_counting="faithful", max_sample_number=1,
                      select_leaves=select_leaves)
    search = TreeSearch(rules, seed=0)
    _window(search, search.first_queue(), lambda n: 1.0 if n == (0,) else (0.0 if len(n) == 2 else None))
    assert search.tree.contrast_pair_count() == 0
    search.next_queue()
    assert search.tree.stats[(1,)].visits == 2
    assert search.pair_count == 1 and search.should_stop()


class _Episode(Episode):
    """A scripted episode: `act` returns the given StepResult, `answer` checks against "42"."""

    task_id, goal, observation = "t", "goal", ""

    def __init__(self, act_result=None):
        self.act_result = act_result

    def act(self, code):
        return self.act_result

    def answer(self, text):
        ok = text == "42"
        return StepResult("Your answer is correct." if ok else "Your answer is incorrect.", done=ok, success=ok)

    def fork(self):
        return self

    def close(self):
        pass


@pytest.mark.parametrize("result, suffix", [
    (StepResult("You won.", done=True, success=True), True),
    (StepResult("The level's step limit is reached.", done=True, success=False), False),
    (StepResult("Nothing happens.", done=False, success=False), False),
])
def test_finished_suffix_only_when_the_task_is_solved(result, suffix):
    """The original appends " Your finished the task." when `check_answer` (= the env's success flag)
    is true, never to a failed or truncated episode."""
    obs = execute_generation(_Episode(result), "Action: look()\nEnd Action", requires_answer=False).observation
    assert obs.endswith(FINISHED_SUFFIX) == suffix
    assert obs.startswith(result.observation)


def test_more_than_one_answer_reminder_only_on_incorrect_answers():
    """The original adds the "more than one answer" reminder to "Your answer is incorrect." only."""
    right = execute_generation(_Episode(), "Answer: 42\nAnswer: 7", requires_answer=True)
    wrong = execute_generation(_Episode(), "Answer: 7\nAnswer: 42", requires_answer=True)
    assert right.observation == "Your answer is correct." and right.success
    assert wrong.observation == "Your answer is incorrect.\n*Extra reminder: " + REMINDER_ANSWERS


@pytest.mark.parametrize("text, finish, stop_reason, expected", [
    ("Action:\nprint(1)\n", "stop", "End Action", "Action:\nprint(1)\nEnd Action"),   # cut by our stop string
    ("Action:\nprint(1)\n", "stop", None, "Action:\nprint(1)\n"),                     # the model's own EOS
    ("Action:\nprint(1)\n", "stop", 128009, "Action:\nprint(1)\n"),                   # a stop token id
    ("Action:\nprint(1)", "length", None, "Action:\nprint(1)"),                       # cut by max_tokens
    ("Answer: 3", "stop", "End Action", "Answer: 3"),
])
def test_end_action_restored_only_when_our_stop_string_cut_it(text, finish, stop_reason, expected):
    """The stored step is what the model generated: 'End Action' is put back only where the server
    says our stop string ended the generation (vLLM's `stop_reason`), not after the model's own end."""
    assert restore_end_action(text, finish, stop_reason) == expected


def test_llm_client_reports_the_stop_reason():
    """The scripted server (like vLLM) says which stop string ended a choice; EOS gives None."""
    from densepolicy.serving.llm_client import LLMClient
    from densepolicy.testing.fake_server import FakeOpenAIServer

    async def ask(server):
        client = LLMClient(server.base_url, server.model_name)
        try:
            return await client.chat([{"role": "user", "content": "hi"}], n=2, stop=["End Action"])
        finally:
            await client.aclose()

    with FakeOpenAIServer(["Action:\nprint(1)\nEnd Action\nmore", "Answer: 2"]) as server:
        res = asyncio.run(ask(server))
    assert res.texts == ["Action:\nprint(1)\n", "Answer: 2"]
    assert res.stop_reasons == ["End Action", None]


def test_pairs_strip_assistant_turns_like_the_original(tmp_path):
    """The original strips every assistant turn of both histories before comparing and writing them, so
    chosen/rejected and the assistant turns of the prompt carry no surrounding whitespace."""
    from densepolicy.postprocess.pairs import extract_pairs_file, read_pairs
    from densepolicy.testing.synthetic_trees import tree_from_spec, write_jsonl

    nodes = tree_from_spec("t", {"0: Thought: go\nAction:\nprint(1)\nEnd Action\n\n": {
        "0:\nAnswer: 1  ": "S", "1:  Answer: 2\n": "F"}, "1": "F"})
    write_jsonl(tmp_path / "math.train.None.jsonl", nodes)
    extract_pairs_file(tmp_path / "math.train.None.jsonl", tmp_path / "p.pairs.csv", show_progress=False)
    rows = {(r["chosen_node"], r["rejected_node"]): r for _, r in read_pairs(tmp_path / "p.pairs.csv")}
    deep = rows[("0-0", "0-1")]
    assert (deep["chosen"], deep["rejected"]) == ("Answer: 1", "Answer: 2")
    assert deep["prompt"][1] == {"role": "assistant", "content": "Thought: go\nAction:\nprint(1)\nEnd Action"}
    assert deep["prompt"][2]["content"] == "obs after 0"                     # observations are kept as they are
    assert rows[("0", "1")]["chosen"] == "Thought: go\nAction:\nprint(1)\nEnd Action"
    assert deep["split"] == "train"  # from the dump's name when there is no result CSV (budgets need it)


def test_alfworld_type_datasets_land_in_the_alfworld_table(tmp_path):
    """An evaluation of `alfworld_put` (and `alfworld_cool`, as the original's per-type runs) gets its
    per-type cells in the ALFWorld table, like the original's per-type rows; not "Other datasets"."""
    import csv

    from densepolicy.postprocess.scores import build_tables, score_file

    def write(name, dataset, task_type, scores):
        path = tmp_path / name
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["task_id", "dataset", "status", "score", "turns", "task_type"])
            w.writeheader()
            for i, s in enumerate(scores):
                w.writerow({"task_id": f"{task_type}{i}", "dataset": dataset, "status": "success" if s else "fail",
                            "score": s, "turns": "", "task_type": task_type})
        return path

    put = write("alfworld_put.valid_unseen.None.csv", "alfworld_put", "put", [1, 0, 1, 1])
    cool = write("alfworld_cool.valid_unseen.None.csv", "alfworld_cool", "cool", [1, 0])
    tables = build_tables([score_file(put, label="m"), score_file(cool, label="m")])
    assert tables.other_rows == []
    # put 3/4 = 75.00, cool 1/2 = 50.00, macro over the two types present = 62.50
    assert tables.embodied_rows == [["m", "75.00", "–", "–", "50.00", "–", "–", "62.50", "–"]]
    metrics = {(r["dataset"], r["metric"]): r["value"] for r in tables.tidy}
    assert metrics[("alfworld_put", "success_put")] == 75.0 and metrics[("alfworld", "success_avg_macro")] == 62.5
    clash = write("alfworld.valid_unseen.None.csv", "alfworld", "put", [0])
    with pytest.raises(ValueError, match="put"):  # the same type from two files of one label: refused
        build_tables([score_file(put, label="m"), score_file(clash, label="m")])


def _write_pairs(path, dataset, per_task, split=None):
    """A pairs CSV with `per_task[task]` selected pairs per task; no `split` column when split is None."""
    import csv
    import json

    from densepolicy.postprocess.pairs import PAIR_COLUMNS

    columns = [c for c in PAIR_COLUMNS if split is not None or c != "split"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for task, n in per_task.items():
            for i in range(n):
                writer.writerow({"task_id": task, "dataset": dataset, "split": split, "task_type": "",
                                 "prompt": json.dumps([{"role": "user", "content": "q"}]), "chosen": f"c{i}",
                                 "rejected": f"r{i}", "chosen_node": str(i), "rejected_node": "x",
                                 "chosen_value": 1, "rejected_value": 0, "chosen_visits": 1,
                                 "rejected_visits": 1, "depth": 1, "selected": True})


@pytest.mark.parametrize("with_split_column", [True, False])
def test_pair_budgets_count_tasks_per_split(tmp_path, with_split_column):
    """MATH train and test index their problems separately: task "0" of train is another problem than
    task "0" of test. Budgets rank and keep problems, so a task is (dataset, split, task_id); files
    without a `split` column take it from their name `<dataset>.<split>.pairs.csv`."""
    from densepolicy.postprocess.budget import merge_all_pairs
    from densepolicy.postprocess.config import Budget, MergePairsConfig

    train, test = tmp_path / "math.train.pairs.csv", tmp_path / "math.test.pairs.csv"
    _write_pairs(train, "math", {"0": 3, "1": 1}, "train" if with_split_column else None)
    _write_pairs(test, "math", {"0": 2}, "test" if with_split_column else None)
    cfg = MergePairsConfig(budgets={"math": Budget(pairs=100, tasks=2)})
    report = merge_all_pairs([train, test], tmp_path / "out.csv", cfg, show_progress=False)
    # 3 problems (train 0: 3 pairs, test 0: 2, train 1: 1); the 2 richest are kept: 5 pairs
    assert report.groups["math"].tasks_available == 3 and report.groups["math"].pairs_available == 6
    assert report.groups["math"].tasks_kept == 2 and report.groups["math"].pairs_kept == 5
