from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from deployments import revisions
from deployments.models import (
    Agent,
    AgentVersion,
    Deployment,
    Membership,
    Policy,
    Secret,
    Target,
    Team,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ["username"]
        skip_postgeneration_save = True
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    @factory.post_generation
    def password(obj, create, extracted, **kwargs):
        obj.set_password(extracted or "pw-for-tests")
        if create:
            obj.save(update_fields=["password"])


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        skip_postgeneration_save = True
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")

    @factory.post_generation
    def policy(obj, create, extracted, **kwargs):
        if create:
            Policy.objects.get_or_create(team=obj)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = "viewer"


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    team = factory.SubFactory(TeamFactory)
    slug = factory.Sequence(lambda n: f"agent-{n}")
    name = factory.Sequence(lambda n: f"Agent {n}")
    pattern = "realtime"


class VersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentVersion

    agent = factory.SubFactory(AgentFactory)
    number = factory.Sequence(lambda n: n + 1)
    image = "hangar/reference-agent:latest"
    port = 8080


class TargetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Target

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"target-{n}")
    kind = "local"
    connection = factory.LazyFunction(dict)


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deployment
        skip_postgeneration_save = True

    agent = factory.SubFactory(AgentFactory)
    version = factory.LazyAttribute(lambda o: VersionFactory(agent=o.agent))
    target = factory.LazyAttribute(lambda o: TargetFactory(team=o.agent.team))
    environment = "production"
    replicas = 1

    @factory.post_generation
    def first_revision(obj, create, extracted, **kwargs):
        """Revision 1, as ``actions.create_deployment`` makes it."""
        if create:
            revisions.desired(obj)


class SecretFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Secret

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"SECRET_{n}")
    value = "s3cr3t-value"
