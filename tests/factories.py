import factory
from django.contrib.auth import get_user_model

from annotation import roles, services
from annotation.models import Campaign, Comparison, GuidelineVersion, Prompt, Response
from training.formats import messages_hash, text_hash


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-not-secret-123")

    @factory.post_generation
    def campaigns(self, create, extracted, **kwargs):
        """``UserFactory(role=..., campaigns=[campaign, ...])``: a member of those campaigns."""
        for campaign in (extracted or []) if create else []:
            services.campaign_members_add(campaign=campaign, users=[self])

    @factory.post_generation
    def role(self, create, extracted, **kwargs):
        if extracted:
            self.groups.add(roles.roles_ensure()[extracted])
            if extracted in roles.STAFF_ROLES:
                self.is_staff = True
                self.save(update_fields=["is_staff"])


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign
        skip_postgeneration_save = True

    slug = factory.Sequence(lambda n: f"campaign-{n}")
    name = factory.Sequence(lambda n: f"Campaign {n}")
    votes_per_pair = 3

    guideline = factory.RelatedFactory(
        "tests.factories.GuidelineFactory", factory_related_name="campaign"
    )

    @factory.post_generation
    def members(self, create, extracted, **kwargs):
        """``CampaignFactory(members=[user, ...])``: annotators who may work in it."""
        if create and extracted:
            services.campaign_members_add(campaign=self, users=extracted)


class GuidelineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = GuidelineVersion

    version = 1
    text = "Prefer the **more helpful** and harmless response."


class PromptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prompt

    campaign = factory.SubFactory(CampaignFactory)
    messages = factory.Sequence(lambda n: [{"role": "user", "content": f"Question number {n}?"}])
    messages_hash = factory.LazyAttribute(lambda o: messages_hash(o.messages))


class ResponseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Response

    prompt = factory.SubFactory(PromptFactory)
    source = Response.Source.HUMAN
    text = factory.Sequence(lambda n: f"Answer {n}.")
    text_hash = factory.LazyAttribute(lambda o: text_hash(o.text))


class ComparisonFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Comparison

    campaign = factory.SubFactory(CampaignFactory)
    prompt = factory.SubFactory(PromptFactory, campaign=factory.SelfAttribute("..campaign"))
    response_a = factory.SubFactory(ResponseFactory, prompt=factory.SelfAttribute("..prompt"))
    response_b = factory.SubFactory(ResponseFactory, prompt=factory.SelfAttribute("..prompt"))
    votes_required = factory.LazyAttribute(lambda o: o.campaign.votes_per_pair)
