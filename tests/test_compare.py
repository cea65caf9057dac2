"""``rlhfkit compare``: recipe checks, placeholders, a tiny-model comparison, and resuming it."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhfkit import cli
from rlhfkit.commands import compare
from rlhfkit.errors import ConfigError, RlhfkitError

COMMON = (
    '"--model", "{base}", "--model.device", "{device}", "--data.eval_fraction", "0", '
    '"--train.max_steps", "15", "--train.batch_size", "4", "--train.chat_template", "off", '
    '"--optim.lr", "1e-2", "--log.tensorboard", "false", "--log.progress", "false", '
    '"--run.checkpoint_every", "0", "--run.output_dir", "{output_dir}", "--run.seed", "{seed}"'
)
METHODS = f"""
[[tasks.methods]]
name = "base"

[[tasks.methods]]
name = "rft"
command = ["sft", "--data", "{{best}}", {COMMON}]

[[tasks.methods]]
name = "dpo"
command = ["dpo", "--data", "{{pairs}}", {COMMON}]
"""


def write_recipe(tmp_path, model_dir, prompts_file, reward_spec, methods=METHODS, top=""):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(
        "The food was\nA small model\nCount the legs\nReward models learn\n"
        "I did not\nThe answer is\n"
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""# rlhfkit compare recipe.toml
output_dir = "{tmp_path / "compare"}"
{top}
[model]
path = "{model_dir}"
device = "cpu"

[[tasks]]
name = "letters"
reward = "{reward_spec}"
samples_per_prompt = 8

[tasks.data]
prompts = "{prompts_file}"
eval_prompts = "{held_out}"
eval_size = 6

[tasks.gen]
max_new_tokens = 8
batch_size = 32
chat_template = "off"
{methods}""")
    return recipe


def test_placeholders_are_found_and_filled():
    command = ["sft", "--data", "{best}", "--run.output_dir", "{output_dir}/x", "--stop", "{{a}}"]
    assert compare.placeholders(command) == {"best", "output_dir"}
    assert compare.fill(command, {"best": "b.jsonl", "output_dir": "runs/r"}) == [
        "sft",
        "--data",
        "b.jsonl",
        "--run.output_dir",
        "runs/r/x",
        "--stop",
        "{a}",
    ]


def test_help_explains_the_recipe_and_its_placeholders(capsys):
    assert cli.main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlhfkit compare RECIPE") and "[[tasks.methods]]" in out
    assert all(f"{{{name}}}" in out for name in compare.PLACEHOLDERS)


def test_recipe_problems_are_all_reported_at_once(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    methods = """
[[tasks.methods]]
name = "base"
command = ["sft"]

[[tasks.methods]]
name = "rft"
command = ["sft", "--data", "{bset}", "--run.output_dir", "{output_dir}", "--run.seed", "{seed}"]

[[tasks.methods]]
name = "rft"
command = ["sft", "--run.output_dir", "{output_dir}"]

[[tasks.methods]]
name = "odd"
command = ["train", "--run.output_dir", "{output_dir}", "--run.seed", "{seed}", "{"]

[[tasks.methods]]
name = "nothing"

[[tasks.methods]]
name = "asked"
instruction = "Be kind."

[[tasks.methods]]
name = "both"
instruction = "{prompt}!"
command = ["sft", "--run.output_dir", "{output_dir}", "--run.seed", "{seed}"]
"""
    recipe = write_recipe(tmp_path, tiny_model_dir, prompts_file, reward_spec, methods)
    with pytest.raises(ConfigError) as error:
        compare.load_recipe(recipe)
    problems = error.value.problems
    assert any("methods[0].command" in p and "base is the starting model" in p for p in problems)
    assert any(
        p.startswith(
            "tasks[0].methods[1].command = '{bset}': unknown placeholder {bset}; "
            "use one of {output_dir}, {seed}"
        )
        for p in problems
    )
    assert any("methods[2].name = 'rft': appears twice" in p for p in problems)
    assert any("methods[2].command" in p and "never uses {seed}" in p for p in problems)
    assert any(
        "methods[3].command" in p and "'train', not an rlhfkit training command" in p
        for p in problems
    )
    assert any("methods[3].command = '{': " in p and "literal brace" in p for p in problems)
    assert any("methods[4].command = '': is required" in p for p in problems)
    assert (
        "tasks[0].methods[5].instruction = 'Be kind.': must contain {prompt} exactly once, "
        "where the prompt goes, as in '[very positive] {prompt}'" in problems
    )
    assert any("methods[6].instruction" in p and "not both" in p for p in problems)


def test_missing_fields_are_named(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("seeds = 2\n")
    with pytest.raises(ConfigError, match=r"tasks: missing; add a \[\[tasks\]\] table"):
        compare.load_recipe(recipe)
    recipe.write_text(
        "seeds = 0\n[[tasks]]\nsamples_per_prompt = 4\n[tasks.data]\neval_size = 1\n"
        '[[tasks.methods]]\nname = "base"\n'
    )
    with pytest.raises(ConfigError) as error:
        compare.load_recipe(recipe)
    assert error.value.problems == [
        "seeds = 0: must be at least 1; give a value >= 1",
        "tasks[0].data.eval_size = 1: gives no interval; evaluate 2 prompts or more (0: none)",
        "tasks[0].name = '': is required: letters, digits, '.', '_' or '-'",
        "tasks[0].reward = '': is required; name the task's reward, e.g. sentiment",
    ]
    recipe.write_text(
        '[[tasks]]\nname = "t"\nreward = "length"\n[tasks.data]\neval_size = 0\n'
        '[[tasks.methods]]\nname = "base"\n'
    )
    with pytest.raises(ConfigError) as error:
        compare.load_recipe(recipe)
    assert error.value.problems == [
        "tasks[0].data.eval_size = 0: must be at least 2: compare evaluates every method on "
        "held-out prompts"
    ]
    recipe.write_text('[[tasks]]\nname = "t"\nreward = "length"\nsamples = 4\n')
    with pytest.raises(ConfigError) as error:
        compare.load_recipe(recipe)
    assert error.value.problems[0].startswith(
        "tasks[0].samples: unknown key (valid keys: name, reward, samples_per_prompt"
    )
    assert error.value.problems[1].startswith("tasks[0].methods: missing")
    recipe.write_text(
        '[[tasks]]\nname = "t"\nreward = "length"\n[[tasks.methods]]\nname = "sft"\n'
        'command = ["sft", "--run.output_dir", "{output_dir}", "--seed", "{seed}"]\n'
    )
    with pytest.raises(ConfigError, match='tasks.0..methods: no "base"; add'):
        compare.load_recipe(recipe)


def test_the_cli_reports_a_bad_recipe_in_one_line(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, capsys
):
    methods = METHODS.replace("{best}", "{bset}")
    recipe = write_recipe(tmp_path, tiny_model_dir, prompts_file, reward_spec, methods)
    assert cli.main(["compare", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhfkit compare: error: tasks[0].methods[1]")
    assert cli.main(["compare", "--seeds", "2"]) == 2
    assert "no recipe" in capsys.readouterr().err


def test_compare_base_rft_dpo_then_resume(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, monkeypatch, capsys
):
    ilql = f'["ilql", "--data", "{{samples}}", "--data.rating_field", "score", {COMMON}]'
    methods = METHODS + f'\n[[tasks.methods]]\nname = "ilql"\ncommand = {ilql}\n'
    methods += '\n[[tasks.methods]]\nname = "asked"\ninstruction = "Say o: {prompt}"\n'
    recipe = write_recipe(tmp_path, tiny_model_dir, prompts_file, reward_spec, methods)
    out = tmp_path / "compare"
    trained = []
    train = compare._train
    monkeypatch.setattr(
        compare, "_train", lambda argv, where: trained.append(argv[0]) or train(argv, where)
    )

    # 1. the whole comparison: sampling stage, two trained methods, the base, one table
    assert cli.main(["compare", str(recipe)]) == 0
    assert trained == ["sft", "dpo", "ilql"]
    assert "| rft |" in capsys.readouterr().out
    seed_dir = out / "letters" / "seed-0"
    assert all(
        (seed_dir / "sampled" / name).is_file()
        for name in ("samples.jsonl", "best.jsonl", "pairs.jsonl", "stage.json")
    )
    assert len((seed_dir / "sampled" / "samples.jsonl").read_text().splitlines()) == 4 * 8
    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in results["tasks"][0]["rows"]}
    assert list(rows) == ["base", "rft", "dpo", "ilql", "asked"]
    assert rows["base"]["kl"] == 0 and rows["base"]["vs_base"] is None
    # the asked base: the untrained model, prompted through the instruction
    asked = json.loads((seed_dir / "results" / "asked.json").read_text())
    assert asked["conditioning"]["instruction"] == "Say o: {prompt}" and asked["seconds"] is None
    assert rows["asked"]["kl"] == 0 and rows["asked"]["score"] != rows["base"]["score"]
    assert all(rows[name]["kl"] > 0 for name in ("rft", "dpo", "ilql"))  # trained away
    assert (seed_dir / "ilql" / "model" / "ilql_heads.safetensors").is_file()
    # rejection sampling on a letter-o reward: the fine-tuned model writes more o's
    assert rows["rft"]["score"]["mean"] > rows["base"]["score"]["mean"]
    assert rows["rft"]["seconds"] > 0 and rows["base"]["seconds"] is None
    markdown = (out / "results.md").read_text()
    assert (
        "### letters" in markdown and "| dpo |" in markdown and "4 training prompts x 8" in markdown
    )
    # a finished method keeps its model, not its checkpoints (sft always writes a final one)
    assert (seed_dir / "rft" / "model").is_dir() and not (seed_dir / "rft" / "checkpoints").exists()
    recorded = json.loads((seed_dir / "results" / "rft.train.json").read_text())
    assert recorded["command"][:3] == ["sft", "--data", str(seed_dir / "sampled" / "best.jsonl")]

    # 2. run again: nothing trains; a missing result is evaluated again from the kept model;
    #    a run without its model (stopped half way) trains from scratch
    (seed_dir / "results" / "dpo.json").unlink()
    shutil.rmtree(seed_dir / "rft" / "model")
    trained.clear()
    assert cli.main(["compare", "--config", str(recipe)]) == 0
    assert trained == ["sft"]
    again = json.loads((out / "results.json").read_text())
    rows_again = {row["method"]: row for row in again["tasks"][0]["rows"]}
    assert rows_again["dpo"]["score"] == rows["dpo"]["score"]  # the same model, the same seed
    assert rows_again["base"] == rows["base"]

    # 3. a changed command or changed task settings would mix incomparable runs: refused
    recipe.write_text(recipe.read_text().replace('"1e-2"', '"2e-2"'))
    with pytest.raises(RlhfkitError, match="method rft: its command changed"):
        compare.main(compare.load_recipe(recipe))
    recipe.write_text(recipe.read_text().replace("max_new_tokens = 8", "max_new_tokens = 9"))
    with pytest.raises(RlhfkitError, match="ran with other settings"):
        compare.main(compare.load_recipe(recipe))


def test_settings_saved_before_an_option_was_added_still_compare(tmp_path):
    """A newer rlhfkit's option at its default changes nothing; a changed value still refuses."""
    from rlhfkit.commands.compare_recipe import Config, TaskCfg

    task = TaskCfg(name="letters", reward="length")
    compare._check_settings(tmp_path, task, Config())
    saved = json.loads((tmp_path / "settings.json").read_text())
    del saved["task"]["gen"]["compile"]  # as written before gen.compile existed
    (tmp_path / "settings.json").write_text(json.dumps(saved))
    compare._check_settings(tmp_path, task, Config())
    saved["task"]["gen"]["compile"] = "on"
    (tmp_path / "settings.json").write_text(json.dumps(saved))
    with pytest.raises(RlhfkitError, match="ran with other settings"):
        compare._check_settings(tmp_path, task, Config())
    (tmp_path / "settings.json").write_text(json.dumps({"task": {"no_such_option": 1}}))
    with pytest.raises(RlhfkitError, match="ran with other settings"):
        compare._check_settings(tmp_path, task, Config())


def test_a_validation_table_needs_a_built_in_prompt_set(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    """A user's held-out file has no validation split: say so, rather than score it as one."""
    recipe = write_recipe(
        tmp_path, tiny_model_dir, prompts_file, reward_spec, top='held_out = "validation"'
    )
    with pytest.raises(ConfigError) as error:
        compare.load_recipe(recipe)
    (problem,) = error.value.problems
    assert problem.startswith("tasks[0].data.eval_prompts = ")
    assert 'held_out = "validation" needs a built-in prompt set' in problem
    assert 'or set held_out = "test"' in problem


def test_validation_prompts_are_apart_from_train_and_test():
    from rlhfkit.config import PromptDataCfg
    from rlhfkit.data.prompts import prompt_rows

    data = PromptDataCfg(prompts="vader:movies", eval_size=64)
    texts = {
        split: {row["prompt"] for row in prompt_rows(data, split)}
        for split in ("train", "validation", "test")
    }
    assert len(texts["validation"]) == len(texts["test"]) == 64
    assert not texts["validation"] & texts["test"]
    assert not texts["validation"] & texts["train"]


def test_a_table_on_another_split_does_not_mix_with_saved_results(tmp_path):
    from rlhfkit.commands.compare_recipe import Config, TaskCfg

    task = TaskCfg(name="letters", reward="length")
    compare._check_settings(tmp_path, task, Config())
    saved = json.loads((tmp_path / "settings.json").read_text())
    del saved["held_out"]  # as written before held_out existed: the test split
    (tmp_path / "settings.json").write_text(json.dumps(saved))
    compare._check_settings(tmp_path, task, Config())
    with pytest.raises(RlhfkitError, match="ran with other settings"):
        compare._check_settings(tmp_path, task, Config(held_out="validation"))


def test_an_ilql_model_is_evaluated_as_it_decodes_steered_by_its_heads(tmp_path, tiny_model_dir):
    """compare scores an ILQL run's policy, not its trunk alone: the heads steer the sampling
    (and the KL is that of the steered distribution)."""
    import torch

    from rlhfkit.config import GenCfg, ModelCfg
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.ilql_heads import IlqlHeads
    from rlhfkit.rewards import load_reward

    model_cfg = ModelCfg(path=str(tiny_model_dir), device="cpu")
    base = load_causal_lm(model_cfg)
    steered_dir = tmp_path / "ilql-model"
    shutil.copytree(tiny_model_dir, steered_dir)
    heads = IlqlHeads(base[0].config.hidden_size, base[0].config.vocab_size)
    torch.manual_seed(0)
    for head in (heads.target_q1, heads.target_q2, heads.v):
        torch.nn.init.normal_(head.weight, std=2.0)
    heads.save(steered_dir, beta=4.0)
    rows = [{"prompt": p} for p in ("The movie was", "She said the", "What is two")]
    gen = GenCfg(max_new_tokens=6, chat_template="off")
    reward = load_reward("length")

    def evaluation(model_dir):
        return compare.evaluate(model_dir, base, model_cfg, rows, gen, reward, seed=3)[0]

    plain, steered = evaluation(tiny_model_dir), evaluation(steered_dir)
    assert steered.completions != plain.completions
    assert all(kl == pytest.approx(0, abs=1e-4) for kl in plain.kl)  # the same weights
    assert max(abs(kl) for kl in steered.kl) > 0.1
