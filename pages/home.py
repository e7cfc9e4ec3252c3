"""Home: few-shot learning and MAML for a student, a real 5-way task, and what each page does."""

import streamlit as st

from fewshot import runs
from fewshot.config import Config
from fewshot.omniglot import DatasetNotFound, split_characters
from fewshot.plots import task_picture
from fewshot.tasks import TaskSampler
import app_ui as ui

st.title("Few-shot learning with MAML")

st.markdown("""
**Few-shot learning.** You see one drawing each of five characters you have never met, and then a sixth
drawing: which of the five is it? People do this easily. A network trained the usual way needs hundreds of
examples per class. Few-shot learning asks for a model that learns a new *N*-way classification *task* from
*K* examples per class (here 5-way 1-shot). The model gets a **support set** of N×K labelled drawings to learn
from and is judged on a **query set** of new drawings of the same classes.

**Meta-learning** trains on many such tasks, built from the characters of Omniglot's 30 "background"
alphabets, so that learning a new task becomes quick. It is tested on tasks from 20 other alphabets it never saw.

**MAML** (model-agnostic meta-learning, Finn, Abbeel & Levine, 2017) looks for initial weights θ from which a
few gradient steps on a task's support set give a good classifier for that task.
""")

st.markdown("**Inner update**: adapt to task $\\mathcal{T}_i$ by gradient descent on its support set, "
            "with step size α (one or a few steps):")
st.latex(r"\theta'_i = \theta - \alpha \, \nabla_\theta \, \mathcal{L}_{\mathcal{T}_i}^{\text{support}}(f_\theta)")
st.markdown("**Outer update** (the meta-update): move θ so that the *adapted* weights do well on each task's "
            "query set, over a meta-batch of tasks, with step size β (Adam in practice):")
st.latex(r"\theta \leftarrow \theta - \beta \, \nabla_\theta \sum_{\mathcal{T}_i}"
         r"\mathcal{L}_{\mathcal{T}_i}^{\text{query}}\big(f_{\theta'_i}\big)")
st.markdown("The outer gradient goes back through the inner update. By the chain rule, for one inner step:")
st.latex(r"\nabla_\theta \mathcal{L}^{\text{query}}(f_{\theta'_i}) = "
         r"\big(I - \alpha \, \nabla^2_\theta \mathcal{L}^{\text{support}}(f_\theta)\big)\,"
         r"\nabla_{\theta'_i} \mathcal{L}^{\text{query}}(f_{\theta'_i})")
st.markdown("""
**First-order MAML (FOMAML)** drops the second-order term, the Hessian $\\nabla^2_\\theta \\mathcal{L}$, and
uses the query-loss gradient at the adapted weights as the meta-gradient:
""")
st.latex(r"\nabla_\theta \mathcal{L}^{\text{query}}(f_{\theta'_i}) \approx "
         r"\nabla_{\theta'_i} \mathcal{L}^{\text{query}}(f_{\theta'_i})")
st.markdown("""
No backward pass through the inner loop: cheaper in time and memory, and in the MAML paper nearly as accurate.
The Compare page measures both on this machine.
""")

st.subheader("A 5-way 1-shot task from Omniglot")


@st.cache_resource(show_spinner=False)
def evaluation_sampler(data_root: str) -> TaskSampler:
    """5-way 1-shot tasks, 4 queries per class, from the evaluation alphabets."""
    data = ui.omniglot(data_root)
    return TaskSampler(data.ink, split_characters(data, "lake")["test"], ways=5, shots=1, queries=4)


data_root = Config().data_root
if runs.missing_dataset_help(data_root):
    st.info("The Omniglot dataset is not on this machine, so no task to show here. The Train page says how to "
            "get it; the Draw page works without it.")
else:
    if st.button("Another task"):
        st.session_state.home_task = st.session_state.get("home_task", 0) + 1
    try:
        task = evaluation_sampler(data_root).sample(1, seed=st.session_state.get("home_task", 0))
    except (DatasetNotFound, OSError, ValueError) as error:
        st.error(f"Could not read Omniglot from {data_root}: {error}")
    else:
        with st.container(horizontal=True, gap="medium"):  # the text beside the task, or under it when narrow
            with st.container(width=600):
                # over task_picture's columns: a support drawing (28 px and a 4-px gap), a gap as wide, the queries
                support, _, queries = st.columns([32, 32, 124], gap=None)
                support.markdown("**Support**")
                queries.markdown("**Query**: to recognise")
                st.image(task_picture(task), width="stretch")
            st.markdown("Each row is a class. On the left its one **support** drawing: all the model gets to learn "
                        "the class from. On the right four **query** drawings of the same character, which the "
                        "adapted model must then recognise among the five classes.\n\nThe characters come from "
                        "the evaluation alphabets, which meta-training never sees; a character turned by 90, 180 or "
                        "270 degrees counts as a new class.", width=300)

st.subheader("The pages")
st.markdown("""
- **Train**: pick a preset or set every option (algorithm, network, task shape, inner and outer learning
  rates, meta-batch, iterations, seed), press Start, and watch loss and accuracy live. Stop keeps what was
  learned. A finished run shows its test accuracy; keep its checkpoint for the Draw page or download it.
- **Compare**: trains MAML and first-order MAML from the same initial weights on the same tasks, at the same
  time, and overlays their curves against iterations and against seconds, with their cost per iteration,
  memory and accuracy. Past runs can be overlaid too.
- **Draw**: invent five characters, draw them, let a meta-trained model adapt in a few gradient steps, and
  see it recognise a new drawing.
- **Challenge**: do the model's job. Sort one-shot tasks of characters from alphabets nobody trained on, then
  see the model's answers to the same tasks, and the room's score against it.
""")
