"""python manage.py simulate_loop --campaign SLUG --rounds 3 --rule concise [--pairs 256] [--noise 0.2]
[--kind dpo] [--data on_policy] [--config key=value ...] [--seed 0] [--eval-prompts 64]

The whole loop in this process with simulated annotators following a hidden rule
(``workers.simulate``); prints each round's figures under the rule, against the original policy."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotation.management.commands._common import campaign_or_error, command_errors
from annotation.management.commands.train import typed_overrides
from annotation.models import TrainingRun
from training.rules import RULES, rule_from_spec
from workers.simulate import POLICY_KINDS, SimulationError, simulate_rounds


def round_line(r) -> str:
    e, m = r.evaluation, r.minutes
    return (
        f"round {r.round}: {r.version} (run {r.run_id}), {r.pairs} pairs, {r.votes} votes, "
        f"{r.preferences} new preferences ({r.preferences_total} in all); "
        f"win rate vs original {e.win_rate:.3f} [{e.win_low:.3f}, {e.win_high:.3f}] "
        f"({e.wins}W {e.ties}T {e.losses}L of {e.n_prompts}), KL {e.kl:.3f}, "
        f"mean length {e.mean_length:.1f} tokens (original {e.mean_length_original:.1f}); "
        "minutes " + " / ".join(f"{phase} {m.get(phase, 0.0):.2f}" for phase in ("sample", "vote", "train", "eval"))
    )


class Command(BaseCommand):
    help = ("Run the loop with simulated annotators voting by a hidden rule: sample, vote, retrain, evaluate "
            "under the rule, promote, per round. Give it a campaign of its own.")

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="campaign slug (train and eval prompts needed)")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--rule", required=True,
                            help=f"a built-in rule ({', '.join(RULES)}) or package.module:function")
        parser.add_argument("--pairs", type=int, default=256, help="pairs sampled per round")
        parser.add_argument("--noise", type=float, default=0.2, help="probability a vote is a coin flip instead of the rule")
        parser.add_argument("--kind", default="dpo", choices=POLICY_KINDS, help="training kind per round")
        parser.add_argument("--data", choices=TrainingRun.DataScope.values, default=TrainingRun.DataScope.ON_POLICY,
                            help="each round trains on the pairs its own policy sampled (on_policy, the default) or on "
                            "all the campaign's preferences (all)")
        parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help="trainer config fields (unknown keys are errors)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--eval-prompts", type=int, default=64, help="eval-split prompts answered per evaluation")

    def handle(self, *args, campaign, rounds, rule, pairs, noise, kind, data, config, seed, eval_prompts, **options):
        camp = campaign_or_error(campaign)
        try:
            rule_fn = rule_from_spec(rule)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if rounds < 1 or pairs < 1 or eval_prompts < 1:
            raise CommandError("--rounds, --pairs and --eval-prompts must be at least 1.")
        if not 0.0 <= noise <= 1.0:
            raise CommandError("--noise must be in [0, 1].")
        overrides = typed_overrides(kind, config)
        self.stdout.write(f"Simulating {rounds} round(s) on '{camp.slug}': rule {rule}, {pairs} pairs per round, "
                          f"{camp.votes_per_pair} simulated annotators per pair, noise {noise}, {kind} on {data} data, seed {seed}.")
        try:
            with command_errors():
                for report in simulate_rounds(campaign_id=camp.pk, rounds=rounds, pairs=pairs, rule=rule_fn, noise=noise,
                                              kind=kind, data_scope=data, config=overrides, seed=seed, eval_prompts=eval_prompts,
                                              progress=True):
                    self.stdout.write(round_line(report))
                    self.stdout.flush()
        except SimulationError as exc:
            raise CommandError(str(exc)) from None
