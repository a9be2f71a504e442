"""
The assignment's parts table, the one place that says which file and function each part is (paths relative to
the root), what each graded test is worth, and which files belong to the instructor. The student version gets
this file with only the visible tests listed (course/handout.py rewrites PARTS); the kit gets it whole.
"""
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the tree this package sits in: the instructor's, a hand-out, a kit
TESTS = "tests/test_parts.py"
REFERENCE_DATA = "sanity/parts_reference.safetensors"  # what the tests load (in the kit: the grading data)
GRADING_DATA = "sanity/parts_grading.safetensors"      # the same tensors for other random weights: kit only
PROBES = "tests/parts_probes.py"                         # what the tests run in the student's process
INSTRUCTOR_ONLY = ("tests/test_assignment.py", "tests/test_course_table.py", "tests/make_parts_reference.py",
                   GRADING_DATA, "docs/instructors.md", "tests/course_cases.py", "tests/course_variants.py",
                   "tests/test_grading_sandbox.py", "tests/test_grading_fairness.py", "tests/test_gradebook.py")
# never in the student version (course_cases.py and course_variants.py hold solutions)
MANIFEST = "assignment.json"  # written into the student version
KIT_MANIFEST = "kit.json"     # written into the kit


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    file: str
    function: str     # Class.method or function
    points: int
    tests: tuple      # ((test function in tests/test_parts.py, its points), ...): the points add up to the part's
    what: str
    read: str = ""    # what to read first (HANDOUT.md)

    @property
    def names(self):
        return tuple(t for t, _ in self.tests)


# A test that checks what its part is about (the 80/10/10, T^2) weighs the most
PARTS = (
    Part("attention", "model.py", "explicit_attention", 6,
         (("test_attention_equals_softmax_qkt_v", 2), ("test_attention_ignores_padding_keys", 2),
          ("test_attention_gradients_match_sdpa", 1), ("test_attention_dropout_on_the_weights", 1)),
         "softmax(QK^T / sqrt(d)) V with padding masked",
         "Vaswani et al. 2017, Sec. 3.2.1; F.scaled_dot_product_attention's documentation"),
    Part("heads", "model.py", "Layer.attention", 8,
         (("test_heads_match_transformers", 2), ("test_heads_swap_exchanges_query_and_key", 2),
          ("test_heads_padding_and_no_mask", 2), ("test_heads_without_padding_mask", 1),
          ("test_heads_explicit_path_and_dropout_only_in_training", 1)),
         "split into heads and merge; SPS's Q/K swap",
         "Layer.__init__ (the fused qkv projection); Vaswani et al. Sec. 3.2.2; Pea-KD (Cho & Kang 2020) on SPS"),
    Part("layer", "model.py", "Layer.forward", 5,
         (("test_layer_matches_transformers", 2), ("test_layer_passes_swap_to_attention", 1.5),
          ("test_layer_dropout_on_each_sublayer_output", 1.5)), "post-LayerNorm residual blocks",
         "Layer.feed_forward; Vaswani et al. Sec. 3.1 and 5.4 (residual dropout)"),
    Part("embeddings", "model.py", "Embeddings.forward", 5,
         (("test_embeddings_match_transformers", 2), ("test_embeddings_of_a_student_have_no_token_types", 1.5),
          ("test_embeddings_shorter_batch_and_dropout_after_layernorm", 1.5)),
         "word + position (+ type) embeddings", "Embeddings.__init__; Devlin et al. 2019, Sec. 3 and Fig. 2"),
    Part("student_init", "model.py", "student_from_teacher", 8,
         (("test_student_init_copies_chosen_layers", 3), ("test_student_init_folds_type_zero_into_positions", 2.5),
          ("test_student_init_default_is_one_layer_of_two_and_copies", 2.5)), "the student from one layer of two",
         "Sanh et al. 2019 (DistilBERT), Sec. 3, student initialisation; Bert.__init__"),
    Part("kl", "losses.py", "kl_per_row", 7,
         (("test_kl_equals_kl_div_at_temperature", 2), ("test_kl_by_hand", 1), ("test_kl_teacher_detached", 1.5),
          ("test_kl_zero_probabilities_and_teacher_detached", 1), ("test_kl_float16_at_a_large_logit_gap", 1.5)),
         "KL(teacher || student) at temperature T", "Hinton et al. 2015, Sec. 2; F.log_softmax"),
    Part("soft_targets", "losses.py", "soft_target_loss", 3,
         (("test_soft_targets_mean_times_t_squared", 1), ("test_soft_targets_sum_over_denom", 1),
          ("test_soft_targets_matches_kldivloss_batchmean", 1)), "L_ce: the KL reduced, times T^2",
         "reduce_rows in losses.py; Hinton et al. 2015, Sec. 2 (why T^2)"),
    Part("mlm", "losses.py", "mlm_loss", 5,
         (("test_mlm_ignores_unmasked_rows", 2), ("test_mlm_flattens_batch_dims", 1.5),
          ("test_mlm_with_nothing_masked_is_zero_with_a_graph", 1.5)), "L_mlm: cross-entropy at masked positions",
         "reduce_rows in losses.py; Devlin et al. 2019, Sec. 3.1 (masked LM)"),
    Part("cosine", "losses.py", "cosine_loss", 4,
         (("test_cosine_equals_cosine_embedding_loss", 1.5), ("test_cosine_teacher_detached", 1.5),
          ("test_cosine_ignores_norm_and_detaches_teacher", 1)),
         "L_cos: 1 - cos(h_s, h_t)", "Sanh et al. 2019, Sec. 3 (the cosine loss); F.cosine_similarity"),
    Part("combine", "losses.py", "combine", 4,
         (("test_combine_weights_and_parts", 2.5), ("test_combine_missing_parts_left_out", 1.5)),
         "alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos", "combine's signature (the alpha defaults)"),
    Part("masking", "data.py", "mask_tokens", 12,
         (("test_masking_chooses_15_percent_of_real_tokens", 2), ("test_masking_80_10_10", 3.5),
          ("test_masking_smoothed_picks_exactly_ceil_by_weight", 3),
          ("test_masking_reproducible_and_input_untouched", 1.5), ("test_masking_random_ids_mask_and_padding", 2)),
         "dynamic masking, 80/10/10, smoothed by weight",
         "Devlin et al. 2019, Sec. 3.1 and Appendix A.1; torch.multinomial and torch.Generator"),
    Part("smoothing", "data.py", "smoothing_weights", 4,
         (("test_smoothing_weights_by_hand", 2), ("test_smoothing_unseen_ids_and_dict_specials", 2)),
         "masking weights count^-0.7", "mask_tokens' weights argument; Lample & Conneau 2019 (XLM), Sec. 3.3"),
    Part("lr_schedule", "machinery/optim.py", "linear_schedule", 4,
         (("test_lr_schedule_warmup_then_decay", 2), ("test_lr_schedule_no_warmup_and_past_the_end", 2)),
         "linear warm-up, linear decay", "where train.py builds its LambdaLR; Devlin et al. 2019, Appendix A.2"),
    Part("denominators", "train.py", "forward_backward", 10,
         (("test_denominators_give_the_gradient_of_one_big_batch", 4), ("test_denominators_ce_on_masked_positions", 3),
          ("test_denominators_over_two_ranks", 3)),
         "gradient accumulation: the step's token counts", "train.Objective (its denoms argument)"),
    Part("ptp", "peakd/ptp.py", "ptp_labels", 6,
         (("test_ptp_labels_four_classes", 3.5), ("test_ptp_labels_three_classes_from_logits", 2.5)),
         "Pea-KD's PTP labels: right/wrong x confident/unsure", "Cho & Kang 2020 (Pea-KD), Sec. 3.2"),
    Part("pkd", "losses.py", "pkd_loss", 9,
         (("test_pkd_loss_equals_eq_7", 4), ("test_pkd_loss_without_layers_has_no_patient_term", 2.5),
          ("test_pkd_loss_teacher_states_detached", 2.5)),
         "the Patient-KD loss (Sun et al., Eq. 7)", "Sun et al. 2019 (Patient-KD), Eq. 7; soft_target_loss"),
)
BY_NAME = {p.name: p for p in PARTS}

# make --lean: files that hold near-solutions of parts, left out of the student version ("out") or with a
# function's body blanked ("file:function")
LEAN = (
    ("notebooks/01_bert_and_student.ipynb", "the per-head attention written out (attention, heads)"),
    ("tests/test_peakd.py", "an SPS layer written out (heads)"),
    ("tests/test_losses.py", "the losses' tests, which use the KL below"),
    ("tests/losses_fixtures.py", "KL times T^2 written out (kl, soft_targets)"),
    ("tests/test_fused_head.py", "the fused head's tests, which use it too"),
    ("benchmarks/training.py", "the reference formulas of the losses, KL times T^2 (kl, soft_targets, mlm, cosine)"),
    ("benchmarks/__main__.py", "the benchmarks' command, which imports benchmarks/training.py"),
    ("tests/test_bench.py", "the tests of the benchmarks, which are left out"),
    ("peakd/students.py:make_student", "copies the teacher's layers as student_from_teacher does (student_init)"),
)


class AssignmentError(ValueError):
    """Bad markers, a bad parts table or bad input: one line naming the file, line or value at fault."""

