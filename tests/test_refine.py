"""Collection-level refinement: class prototypes learn from the images, and no class dies.

The collections are small synthetic ones shaped like CLIP's embeddings: images of a class cluster
around a centre, every image shares a common direction, and the label texts lie apart from the
images (the modality gap) with only a weak pull towards their class.
"""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from analyzer_classify.refine import Iteration, RefineParams, refine  # noqa: E402


def unit(rows):
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def collection(seed, *, classes=4, per_class=100, dim=16, text_noise=0.0, hub=0.0):
    """(images, true classes, label texts). ``text_noise`` blurs what each text says about its
    class; ``hub`` moves the first label's text towards the centre of all the images."""
    rng = np.random.default_rng(seed)
    directions, _ = np.linalg.qr(rng.standard_normal((dim, classes + 2)))
    common, gap, *centres = directions.T
    centres = np.array(centres)
    truth = np.repeat(np.arange(classes), per_class)
    images = unit(common + 0.8 * centres[truth] + 0.3 * rng.standard_normal((len(truth), dim)))
    middle = unit(images.mean(axis=0))
    said = unit(centres + text_noise * rng.standard_normal((classes, dim)))
    texts = unit(0.3 * middle + 0.95 * gap + 0.1 * said)
    texts[0] = unit(texts[0] + hub * middle)
    return images, truth, texts


def accuracy(labels, truth):
    return float(np.mean(labels == truth))


def text_only(images, texts):
    return (images @ texts.T).argmax(axis=1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refinement_fixes_images_a_weak_text_prior_gets_wrong(seed):
    images, truth, texts = collection(seed, text_noise=1.0)

    refined = refine(images, texts)

    assert np.array_equal(refined.text_labels, text_only(images, texts))
    assert accuracy(refined.labels, truth) > accuracy(refined.text_labels, truth) + 0.2
    assert refined.labels.dtype == np.int32 and refined.confidence.dtype == np.float32
    assert refined.prototypes.shape == texts.shape
    assert np.allclose(np.linalg.norm(refined.prototypes, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_label_near_the_centre_of_the_images_empties_a_class_for_good_without_the_guard(seed):
    images, truth, texts = collection(seed, classes=5, hub=0.35)
    assert np.bincount(text_only(images, texts), minlength=5)[0] > 0.95 * len(images)  # it takes nearly all

    seed_002 = refine(images, texts, RefineParams(guard="none"))
    guarded = refine(images, texts)  # guard="balance" is the default

    assert seed_002.iterations[-1].active_classes < 5  # a class emptied, and it never came back
    assert guarded.iterations[-1].active_classes == 5  # the guard brought the emptied class back
    assert accuracy(guarded.labels, truth) > accuracy(seed_002.labels, truth) > accuracy(guarded.text_labels, truth)


def test_without_the_guard_it_is_seed_002s_schedule_exactly():
    images, _, texts = collection(2, text_noise=1.0)

    def seed_002(images, texts, iterations=10):  # seed 002's loop, as its authors wrote it
        prototypes = texts.copy()
        for iteration in range(iterations):
            text_weight = 0.95 - 0.35 * iteration / iterations
            labels = np.argmax(images @ prototypes.T / 0.05, axis=1)
            new = np.zeros_like(prototypes)
            for c in range(len(texts)):
                if np.sum(labels == c) > 0:
                    mean = images[labels == c].mean(axis=0)
                    mean /= np.linalg.norm(mean)
                    new[c] = text_weight * texts[c] + (1 - text_weight) * mean
                    new[c] /= np.linalg.norm(new[c])
                else:
                    new[c] = texts[c]
            prototypes = new
        return np.argmax(images @ prototypes.T, axis=1), prototypes

    labels, prototypes = seed_002(images, texts)
    refined = refine(images, texts, RefineParams(guard="none", tolerance=0))

    assert np.array_equal(refined.labels, labels)
    assert np.allclose(refined.prototypes, prototypes, atol=1e-5)
    assert len(refined.iterations) == 10 and not refined.stopped_early
    assert not refined.log_prior.any()


def test_chunks_from_a_source_give_exactly_the_labels_of_the_whole_array():
    images, _, texts = collection(3, text_noise=1.0, per_class=300)

    passes = []

    def chunks():  # as the embedding store yields them: a fresh iterator each pass
        passes.append(1)
        return (images[start : start + 97] for start in range(0, len(images), 97))

    whole = refine(images, texts)
    chunked = refine(chunks, texts)

    assert np.array_equal(chunked.labels, whole.labels)
    assert np.allclose(chunked.confidence, whole.confidence, atol=1e-5)
    assert [s.counts for s in chunked.iterations] == [s.counts for s in whole.iterations]
    assert len(passes) == 1 + len(chunked.iterations)  # the text-only pass, then one per iteration


def test_a_chunk_source_that_changes_between_passes_is_an_error():
    images, _, texts = collection(3)
    sizes = iter([len(images), len(images) - 1])

    def shrinking():
        return iter([images[: next(sizes)]])

    with pytest.raises(ValueError, match="fewer rows"):
        refine(shrinking, texts)


def test_refinement_stops_early_when_assignments_stop_moving():
    images, _, texts = collection(2)  # a good text prior: little to move

    refined = refine(images, texts)

    assert refined.stopped_early
    assert len(refined.iterations) < 10
    assert all(step.moved_share < 0.001 for step in refined.iterations[-2:])  # two still iterations in a row
    assert len(refine(images, texts, RefineParams(tolerance=0)).iterations) == 10


def test_below_min_images_the_text_only_assignment_comes_back_without_iterations():
    images, _, texts = collection(1, text_noise=1.0, per_class=24)  # 96 images

    small = refine(images, texts)

    assert small.iterations == [] and not small.stopped_early
    assert np.array_equal(small.labels, text_only(images, texts))
    assert np.array_equal(small.prototypes, texts)
    assert len(refine(images, texts, RefineParams(min_images=0)).iterations) > 0


def test_on_iteration_reports_each_iteration_as_it_ends():
    images, _, texts = collection(2, text_noise=1.0)
    seen: list[Iteration] = []

    refined = refine(images, texts, RefineParams(tolerance=0), on_iteration=seen.append)

    assert seen == refined.iterations
    assert [step.number for step in seen] == list(range(1, 11))
    assert [round(step.text_weight, 3) for step in seen[:3]] == [0.95, 0.915, 0.88]
    first = seen[0]
    assert first.moved == int(np.sum(refine(images, texts, RefineParams(iterations=1)).labels != refined.text_labels))
    for step in seen:
        assert sum(step.counts) == len(images)
        assert step.active_classes == sum(1 for n in step.counts if n)
        assert step.moved_share == step.moved / len(images)
        assert 0 < step.mean_confidence <= 1
    assert seen[2].describe(10).startswith("iteration 3/10: mean confidence 0.")
    assert "active classes 4/4, text weight 0.88, moved " in seen[2].describe(10)


def test_confidence_is_the_softmax_probability_of_the_chosen_label_at_the_temperature():
    images, _, texts = collection(1, classes=5, hub=0.35)
    params = RefineParams(temperature=0.05)

    refined = refine(images, texts, params)

    logits = images @ refined.prototypes.T / params.temperature + refined.log_prior
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert np.array_equal(refined.labels, logits.argmax(axis=1))
    assert np.allclose(refined.confidence, probs.max(axis=1), atol=1e-4)


def test_params_have_a_digest_for_result_keys_and_are_checked():
    assert RefineParams().digest() == RefineParams().digest()
    assert RefineParams().digest() != RefineParams(guard="none").digest()
    assert RefineParams(iterations=5).as_dict()["iterations"] == 5
    with pytest.raises(ValueError, match="guard"):
        RefineParams(guard="text")
    with pytest.raises(ValueError, match="temperature"):
        RefineParams(temperature=0)
